//! ak-server: agentkernel's long-lived servers (`serve`, `mcp`, the daemon), which
//! `agentkernel` hands those commands to; a position-independent build of the same
//! command line (see `agentkernel_cli::Executable`).

fn main() {
    agentkernel_cli::main(agentkernel_cli::Executable::Server)
}
