//! ak-agent built from this crate alone (the `bin` feature), for a static musl build; the
//! CLI package's `ak-agent` is the same program.

/// musl's allocator (mallocng) keeps each size class in groups of its own, mapped apart,
/// and maps and unmaps them as they fill and empty; dlmalloc carves blocks out of a few
/// large regions. Serving one pooled `run`, the agent took 6 page faults fewer with it
/// (docs/benchmarks.md, "The musl agent, lighter"). glibc's allocator packs blocks too, so
/// the glibc build keeps it. The agent is single-threaded but for tokio's blocking pool,
/// so dlmalloc's one lock is never contended.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() {
    std::process::exit(ak_agent::main_entry())
}
