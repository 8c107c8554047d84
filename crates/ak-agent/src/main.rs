//! ak-agent built from this crate alone (the `bin` feature), for a static musl build; the
//! CLI package's `ak-agent` is the same program.

fn main() {
    std::process::exit(ak_agent::main_entry())
}
