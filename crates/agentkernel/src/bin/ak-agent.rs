//! ak-agent: the in-sandbox agent (PID 1 of every sandbox); all logic lives in the `ak-agent` crate.

fn main() {
    std::process::exit(ak_agent::main_entry())
}
