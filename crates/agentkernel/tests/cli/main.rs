//! Integration tests of the `agentkernel` CLI on the native backend, as root and as an
//! unprivileged user: behaviour, escapes, bad input and leaks.

mod bad_input;
mod common;
mod escape;
mod leaks;
mod run;
