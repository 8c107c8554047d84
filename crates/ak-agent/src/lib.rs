//! ak-agent: the in-sandbox agent.
