//! The host-side end of a one-shot sandbox's release, left to a forked copy of a one-shot
//! process (the CLI's `run`) so that the process can exit as soon as every process of the
//! sandbox is gone. What is left then is bookkeeping nothing else can see or use: the
//! sandbox's cgroup directories and its runtime directory. Removing them took ~0.25 ms of
//! a cold `run`'s wall time (docs/benchmarks.md) for a caller that was only waiting to exit.
//!
//! The copy ("janitor") detaches from the caller's terminal and output at once, so that a
//! caller reading the CLI's output to its end, or waiting on its process group, does not
//! wait for it too. It keeps the runtime directory's lock (the same open file), so the
//! sweep of stale sandboxes leaves the directory alone until the janitor is done, and
//! finishes whatever a janitor killed half-way could not.

use std::sync::Mutex;

/// Which side of [`fork`] this is.
pub(crate) enum Side {
    /// The process that forked: it hands the rest of the release over and goes on.
    Caller,
    /// The janitor: it finishes the release, then calls [`exit`].
    Janitor,
}

/// Janitors started by this process that may still run: reaped when the next one starts,
/// so a process that runs many one-shot sandboxes keeps no zombies.
static JANITORS: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

/// Forks a janitor. Fails (and nothing was forked) when the host refuses a new process.
pub(crate) fn fork() -> std::io::Result<Side> {
    let mut janitors = JANITORS.lock().unwrap_or_else(|e| e.into_inner());
    janitors.retain(|&pid| {
        // SAFETY: waitpid on a child of ours with WNOHANG only reads its exit status.
        let reaped = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        reaped == 0
    });
    // SAFETY: the janitor runs only the release's own code before `_exit`: system calls,
    // and allocation, which glibc's fork leaves usable in the child. It takes no lock that
    // another thread could have held at the fork: its logging goes nowhere (see `detach`),
    // so it never takes stderr's lock.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            detach();
            Ok(Side::Janitor)
        }
        pid => {
            janitors.push(pid);
            Ok(Side::Caller)
        }
    }
}

/// Lets go of the caller's terminal and output: stdio onto /dev/null, a session of its own
/// (no signal meant for the caller's process group or terminal reaches it), and no logging
/// (a line would only go to /dev/null, through a lock another thread may have held at the
/// fork). A failure is left to the sweep, which logs it.
fn detach() {
    // Leaked on purpose: the janitor's only thread keeps it until `_exit`.
    std::mem::forget(tracing::subscriber::set_default(
        tracing::subscriber::NoSubscriber::default(),
    ));
    // SAFETY: plain system calls on descriptors this process owns.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            for fd in 0..=2 {
                libc::dup2(null, fd);
            }
            libc::close(null);
        }
        libc::setsid();
    }
}

/// Ends the janitor without running anything of the caller's (no destructors, no stdio
/// flush, no exit handlers: they are the caller's, and some wait on its other threads).
pub(crate) fn exit() -> ! {
    // SAFETY: `_exit` ends the process at once.
    unsafe { libc::_exit(0) }
}
