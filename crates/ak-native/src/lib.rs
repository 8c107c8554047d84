//! ak-native
