//! System calls for the sandbox's first process, which runs from `clone3` to `execveat` in
//! its parent's memory (`CLONE_VM`, see spawn.rs) and on its parent thread's thread-local
//! storage, while that thread goes on. libc's wrappers report a failure in `errno`, a
//! thread-local the parent's thread writes at the same time, so the child makes every
//! system call through [`syscall`], which returns the error itself. rustix's functions do
//! too (its raw Linux backend) and the child may use them, but rustix has no `clone3` with
//! a stack of the caller's, no `seccomp`, no landlock and no stable `execveat`: this is
//! the one place that knows the machine's system call instruction.

use std::ffi::c_void;

/// Makes system call `number` with up to six arguments (unused ones are ignored by the
/// kernel); `Err(errno)` for a return value in the kernel's error range.
///
/// # Safety
/// The arguments must be what the system call expects (valid pointers, sizes and
/// descriptors); the call must not break an invariant of the calling program.
pub(crate) unsafe fn syscall(number: libc::c_long, args: [usize; 6]) -> Result<usize, i32> {
    let ret: isize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the kernel's system call convention; it clobbers rcx and r11 only.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") number as isize => ret,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: the kernel's system call convention; it changes x0 only.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") number,
            inlateout("x0") args[0] => ret,
            in("x1") args[1],
            in("x2") args[2],
            in("x3") args[3],
            in("x4") args[4],
            in("x5") args[5],
            options(nostack),
        );
    }
    decode(ret)
}

/// A system call's return value: -4095..-1 are errors; any other value (an address, say)
/// is a result.
fn decode(ret: isize) -> Result<usize, i32> {
    if (-4095..0).contains(&ret) {
        Err(-ret as i32)
    } else {
        Ok(ret as usize)
    }
}

/// `syscall(libc::SYS_x, a, b, …)` with each argument converted with `as usize` (pointers,
/// descriptors and flags alike, as the kernel takes them).
macro_rules! sys {
    ($number:expr $(, $arg:expr)* $(,)?) => {{
        let given: &[usize] = &[$($arg as usize),*];
        let mut args = [0usize; 6];
        args[..given.len()].copy_from_slice(given);
        $crate::rawsys::syscall($number, args)
    }};
}
pub(crate) use sys;

/// `struct clone_args` of `clone3(2)`.
#[repr(C)]
#[derive(Default)]
pub(crate) struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// `clone3` whose child starts on a stack of its own (`args.stack`, `args.stack_size`) and
/// calls `entry(arg)`, which must never return; the parent gets the child's pid. A child
/// that shares the parent's memory cannot return from a system call wrapper the way a
/// forked one does: it would return into the parent's stack frame, from a stack with no
/// frames at all, so the jump to `entry` is made right after the system call instruction.
///
/// # Safety
/// `args.stack` must stay mapped until the child has executed another program or exited,
/// and so must whatever `arg` points to; `entry` must only make system calls through
/// [`syscall`] (see the module's comment) and must not return.
pub(crate) unsafe fn clone3_with_entry(
    args: &mut CloneArgs,
    entry: extern "C" fn(*const c_void) -> !,
    arg: *const c_void,
) -> Result<u32, i32> {
    let size = std::mem::size_of::<CloneArgs>();
    let args: *mut CloneArgs = args;
    let ret: isize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the parent's path returns from the system call as from any other; the
    // child's starts on the new stack (16-byte aligned, as `call` requires) and never
    // leaves `entry`.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 as isize => ret,
            in("rdi") args,
            in("rsi") size,
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above; x9 and x10 survive the system call.
    unsafe {
        std::arch::asm!(
            "svc 0",
            "cbnz x0, 2f",
            "mov x29, xzr",
            "mov x0, x9",
            "blr x10",
            "brk #1",
            "2:",
            in("x8") libc::SYS_clone3,
            inlateout("x0") args => ret,
            in("x1") size,
            in("x9") arg,
            in("x10") entry,
            lateout("x30") _,
            options(nostack),
        );
    }
    decode(ret).map(|pid| pid as u32)
}

/// A stack for a child started by [`clone3_with_entry`], with an inaccessible page below it
/// so that an overflow faults instead of writing over the parent's memory.
pub(crate) struct ChildStack {
    base: *mut c_void,
    len: usize,
}

/// Plenty for the child's deepest path (a few KiB: mount ops, landlock, loopback); only the
/// pages it touches are ever allocated.
const CHILD_STACK_BYTES: usize = 256 << 10;
const GUARD_BYTES: usize = 4096;

impl ChildStack {
    pub(crate) fn new() -> std::io::Result<ChildStack> {
        use rustix::mm::{MapFlags, MprotectFlags, ProtFlags, mmap_anonymous, mprotect};
        let len = CHILD_STACK_BYTES + GUARD_BYTES;
        // SAFETY: a fresh anonymous mapping, owned by the returned value.
        let base = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::STACK,
            )?
        };
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of the mapping made above.
        unsafe { mprotect(base, GUARD_BYTES, MprotectFlags::empty())? };
        Ok(stack)
    }

    /// The lowest usable address and the usable size, for `clone_args`.
    pub(crate) fn region(&self) -> (u64, u64) {
        (
            self.base as u64 + GUARD_BYTES as u64,
            (self.len - GUARD_BYTES) as u64,
        )
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used by any child (see spawn.rs).
        if let Err(e) = unsafe { rustix::mm::munmap(self.base, self.len) } {
            tracing::warn!("cannot unmap a sandbox child's stack: {e}");
        }
    }
}

// SAFETY: a plain mapping; whoever owns the value may unmap it from any thread.
unsafe impl Send for ChildStack {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_failure_comes_back_as_its_errno_and_leaves_errno_alone() {
        // SAFETY: errno is this thread's; closing an invalid descriptor has no effect.
        unsafe {
            *libc::__errno_location() = 12345;
            assert_eq!(sys!(libc::SYS_close, -1i32), Err(libc::EBADF));
            assert_eq!(*libc::__errno_location(), 12345);
            assert_eq!(sys!(libc::SYS_getpid), Ok(std::process::id() as usize));
        }
    }

    extern "C" fn write_and_exit(shared: *const c_void) -> ! {
        // SAFETY: the test keeps the counter alive until it has reaped this child.
        let shared = unsafe { &*shared.cast::<AtomicU32>() };
        shared.store(42, Ordering::SeqCst);
        loop {
            // SAFETY: leaving the child.
            let _ = unsafe { sys!(libc::SYS_exit_group, 7) };
        }
    }

    #[test]
    fn a_child_on_its_own_stack_writes_the_parents_memory_and_exits() {
        let shared = AtomicU32::new(0);
        let stack = ChildStack::new().unwrap();
        let (low, size) = stack.region();
        let mut args = CloneArgs {
            flags: libc::CLONE_VM as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: low,
            stack_size: size,
            ..CloneArgs::default()
        };
        // SAFETY: the stack and the counter outlive the child, which is reaped below.
        let pid = unsafe {
            clone3_with_entry(&mut args, write_and_exit, (&raw const shared).cast()).unwrap()
        };
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let reaped = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        assert_eq!(reaped, pid as i32);
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 7);
        assert_eq!(
            shared.load(Ordering::SeqCst),
            42,
            "the child wrote our memory, not a copy"
        );
    }
}
