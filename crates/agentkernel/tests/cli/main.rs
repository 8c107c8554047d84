//! Integration tests of the `agentkernel` CLI on the native backend, as root and as an
//! unprivileged user: behaviour, escapes, bad input and leaks.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions panic on failure by design"
)]

/// The backend the shared tests drive (see `common::BACKEND`).
const BACKEND: &str = "native";

mod bad_input;
mod bench;
mod common;
mod daemon;
mod docker;
mod docker_snapshot;
mod egress;
mod escape;
mod leaks;
mod microvm;
mod microvm_memory;
mod microvm_net;
mod microvm_snapshot;
mod named;
mod pause;
mod run;
mod sdk_files;
mod snapshot;
mod volume_limits;
mod volumes;
