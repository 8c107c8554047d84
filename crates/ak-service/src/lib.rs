//! ak-service
