//! The native backend's CLI integration tests (behaviour, named sandboxes, escapes) run
//! again on the gVisor backend, as root, plus what only gVisor has to show: that the kernel
//! inside is gVisor's, that a non-root user gets a clear refusal, that its pools and its
//! clean-up after kills leave nothing behind. (The native daemon and leak tests mix in
//! rootless runs and the native backend's own paths; `gvisor.rs` covers the same ground.)

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions panic on failure by design"
)]

/// The backend the shared tests drive (see `common::BACKEND`).
const BACKEND: &str = "gvisor";

#[path = "../cli/common.rs"]
mod common;
#[path = "../cli/escape.rs"]
mod escape;
#[path = "../cli/named.rs"]
mod named;
#[path = "../cli/run.rs"]
mod run;
#[path = "../cli/sdk_files.rs"]
mod sdk_files;
#[path = "../cli/volumes.rs"]
mod volumes;

mod gvisor;
