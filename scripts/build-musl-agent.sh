#!/usr/bin/env bash
# Builds the in-sandbox agent as a static musl executable and, given a directory, installs
# it there as `ak-agent-musl`, where `agentkernel` beside it prefers it to the `ak-agent`
# that `cargo build` links, as long as it is not the older of the two (a `cargo build` that
# relinked the agent from newer code wins until this runs again); or point
# AGENTKERNEL_AGENT at it. Why: every sandbox starts the agent, and musl's start-up does
# less than static glibc's (no IRELATIVE relocations, tunables or CPU cache probing by
# cpuid, which traps to the hypervisor in a VM): 0.14 ms of CPU instead of 0.54 ms per
# start, ~0.4 ms less per cold `run` (docs/benchmarks.md). Only the agent crate and its
# dependencies are built (no C code), so Rust's bundled musl is all it needs: no musl-gcc.
#
# Usage: scripts/build-musl-agent.sh [INSTALL_DIR]   (prints the built agent's path)
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
rustup target list --installed 2>/dev/null | grep -qx "$target" || rustup target add "$target"
cargo build --locked --release -p ak-agent --features bin --target "$target" >&2
built=target/$target/release/ak-agent
if [[ $# -ge 1 ]]; then
  # Renamed into place: a running agent's file is never rewritten. `install` gives it the
  # current time, which makes it the newer agent (see above).
  install -m 0755 "$built" "$1/.ak-agent-musl.$$"
  mv -f "$1/.ak-agent-musl.$$" "$1/ak-agent-musl"
fi
echo "$built"
