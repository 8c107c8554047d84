//! agentkernel: run AI agents' commands in isolated sandboxes.

fn main() {
    agentkernel_cli::main(agentkernel_cli::Executable::Client)
}
