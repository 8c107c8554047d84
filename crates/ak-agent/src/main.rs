//! ak-agent built from this crate alone (the `bin` feature), for a static musl build; the
//! CLI package's `ak-agent` is the same program.

/// musl's allocator (mallocng) keeps each size class in groups of its own, mapped apart,
/// and maps and unmaps them as they fill and empty; dlmalloc carves blocks out of a few
/// large regions, and the agent serving a pooled `run` takes fewer page faults with it
/// (docs/benchmarks.md, "The musl agent, lighter"). glibc's allocator packs blocks too, so
/// the glibc build keeps it. The agent is single-threaded but for tokio's blocking pool,
/// so dlmalloc's one lock is seldom contended.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() {
    // The agent forks to start commands on a terminal or as another user; a blocking-pool
    // thread may hold the allocator's lock at that instant. This takes the lock around
    // every fork, as musl's own allocator does, so a child never finds it held by a thread
    // it does not have.
    #[cfg(target_env = "musl")]
    // SAFETY: called before this program allocates anything, as dlmalloc requires.
    unsafe {
        dlmalloc::enable_alloc_after_fork()
    };
    std::process::exit(ak_agent::main_entry())
}
