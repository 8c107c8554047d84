//! The seccomp deny-list every sandbox runs under: system calls that administer the host,
//! cross process boundaries, or widen the kernel's attack surface fail with EPERM.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::NativeError;

/// Denied outright, whatever the arguments.
const DENIED: &[i64] = &[
    // Mounting and namespaces: the sandbox's view of the system is fixed at start.
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_chroot,
    // Looking into or controlling other processes.
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    libc::SYS_pidfd_getfd,
    // Kernel extension and introspection.
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_syslog,
    libc::SYS_lookup_dcookie,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_fanotify_init,
    // Host administration.
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_vhangup,
    libc::SYS_uselib,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    // NUMA policy changes affect memory placement beyond the sandbox.
    libc::SYS_mbind,
    libc::SYS_migrate_pages,
    libc::SYS_move_pages,
    libc::SYS_set_mempolicy,
];

/// Namespace flags `clone` may not be given (they would undo the deny of `unshare`).
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWCGROUP as u64,
];

fn target_arch() -> Result<TargetArch, NativeError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| NativeError::Seccomp(e.to_string()))
}

/// `AUDIT_ARCH_*` of the architecture we are built for: system calls made with another
/// calling convention (i386's `int 0x80` on x86_64) kill the process, as seccompiler's
/// filters do, since their numbers mean other calls.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH: u32 = 0xC000_00F3;

/// x86_64's x32 system calls carry this bit in their number; a deny-list that compares
/// numbers would let `mount | X32_BIT` through where the kernel enables x32, so every
/// number from it on fails with ENOSYS (what a kernel without x32 answers).
#[cfg(target_arch = "x86_64")]
const X32_BIT: u32 = 0x4000_0000;

/// The sandbox's seccomp policy as one program: the denied calls and `clone` with a
/// namespace flag fail with EPERM; `clone3`, which passes its flags in memory where a
/// filter cannot read them, with ENOSYS (libc then falls back to `clone`, which is
/// checked). One program rather than one per action: each filter installed is compiled
/// by the kernel at every sandbox start and run on every system call of the sandbox.
pub(crate) fn build_filters() -> Result<Vec<BpfProgram>, NativeError> {
    use crate::bpf::{Assembler, DATA_ARCH, DATA_NR, Target, data_arg_low};

    let mut asm = Assembler::default();
    let (allow, eperm, enosys, kill) = (
        asm.new_label(),
        asm.new_label(),
        asm.new_label(),
        asm.new_label(),
    );
    asm.load(DATA_ARCH);
    asm.jump_eq(AUDIT_ARCH, Target::Next, Target::Label(kill));
    asm.load(DATA_NR);
    #[cfg(target_arch = "x86_64")]
    asm.jump_ge(X32_BIT, Target::Label(enosys), Target::Next);
    for &nr in DENIED {
        asm.jump_eq(nr as u32, Target::Label(eperm), Target::Next);
    }
    asm.jump_eq(libc::SYS_clone3 as u32, Target::Label(enosys), Target::Next);
    asm.jump_eq(libc::SYS_clone as u32, Target::Next, Target::Label(allow));
    // Every namespace flag lives in the low half of `clone`'s flags.
    asm.load(data_arg_low(0));
    let namespaces = CLONE_NAMESPACE_FLAGS
        .iter()
        .fold(0u64, |all, flag| all | flag);
    let namespaces = u32::try_from(namespaces)
        .map_err(|_| NativeError::Seccomp("a namespace flag above bit 31".into()))?;
    asm.jump_set(namespaces, Target::Label(eperm), Target::Label(allow));
    asm.label(allow);
    asm.ret(libc::SECCOMP_RET_ALLOW);
    asm.label(eperm);
    asm.ret(libc::SECCOMP_RET_ERRNO | libc::EPERM as u32);
    asm.label(enosys);
    asm.ret(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
    asm.label(kill);
    asm.ret(libc::SECCOMP_RET_KILL_PROCESS);
    Ok(vec![asm.finish()?])
}

/// The filters of [`build_filters`] for an agent to install itself (`ak-agent --seccomp
/// FILE`), where the backend cannot install them before the agent starts (gVisor, whose
/// kernel runs the filters for its processes): for each program in order, its instruction
/// count as a little-endian `u32`, then each instruction as `code: u16, jt: u8, jf: u8,
/// k: u32`, little-endian.
///
/// With `deny_privilege_bits`, a third filter refuses (EPERM) setting the setuid or setgid
/// bit through the `chmod` family and file creation: for backends whose file server is
/// host root (gVisor's gofer), where such a file in a directory shared with the host
/// would be a root-owned setuid program on the host.
pub fn filters_for_agent(deny_privilege_bits: bool) -> Result<Vec<u8>, NativeError> {
    let mut programs = build_filters()?;
    if deny_privilege_bits {
        programs.push(privilege_bits_filter()?);
    }
    let mut bytes = Vec::new();
    for program in programs {
        let count = u32::try_from(program.len())
            .map_err(|_| NativeError::Seccomp("a filter longer than u32::MAX".into()))?;
        bytes.extend_from_slice(&count.to_le_bytes());
        for instruction in program {
            bytes.extend_from_slice(&instruction.code.to_le_bytes());
            bytes.push(instruction.jt);
            bytes.push(instruction.jf);
            bytes.extend_from_slice(&instruction.k.to_le_bytes());
        }
    }
    Ok(bytes)
}

/// Refuses (EPERM) a mode argument with the setuid or setgid bit, for the calls that set a
/// file's mode: `(system call, index of its mode argument)`.
fn privilege_bits_filter() -> Result<BpfProgram, NativeError> {
    const MODE_ARGUMENTS: &[(i64, u8)] = &[
        (libc::SYS_chmod, 1),
        (libc::SYS_fchmod, 1),
        (libc::SYS_fchmodat, 2),
        (libc::SYS_creat, 1),
        (libc::SYS_open, 2),
        (libc::SYS_openat, 3),
        (libc::SYS_mknod, 1),
        (libc::SYS_mknodat, 2),
    ];
    let err = |e: seccompiler::BackendError| NativeError::Seccomp(e.to_string());
    let mut rules = BTreeMap::new();
    for &(nr, index) in MODE_ARGUMENTS {
        let bit_rules = [libc::S_ISUID, libc::S_ISGID]
            .into_iter()
            .map(|bit| {
                let bit = u64::from(bit);
                let condition = SeccompCondition::new(
                    index,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(bit),
                    bit,
                )
                .map_err(err)?;
                SeccompRule::new(vec![condition]).map_err(err)
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(nr, bit_rules);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target_arch()?,
    )
    .map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_program_with_every_outcome() {
        use crate::bpf::evaluate;
        let filters = build_filters().unwrap();
        assert_eq!(filters.len(), 1);
        let program = &filters[0];
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let call =
            |nr: i64, arg0: u64| evaluate(program, AUDIT_ARCH, nr as u32, [arg0, 0, 0, 0, 0, 0]);
        for &nr in DENIED {
            assert_eq!(call(nr, 0), eperm, "system call {nr}");
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_mkdir,
        ] {
            assert_eq!(call(nr, 0), libc::SECCOMP_RET_ALLOW, "system call {nr}");
        }
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(call(libc::SYS_clone, thread), libc::SECCOMP_RET_ALLOW);
        assert_eq!(
            call(libc::SYS_clone, libc::SIGCHLD as u64),
            libc::SECCOMP_RET_ALLOW
        );
        for &flag in CLONE_NAMESPACE_FLAGS {
            assert_eq!(call(libc::SYS_clone, flag | libc::SIGCHLD as u64), eperm);
        }
        assert_eq!(call(libc::SYS_clone3, 0), enosys);
        assert_eq!(
            evaluate(program, 0x4000_0003, libc::SYS_read as u32, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS,
            "i386 calls"
        );
        #[cfg(target_arch = "x86_64")]
        for nr in [libc::SYS_read, libc::SYS_mount] {
            assert_eq!(call(nr | i64::from(X32_BIT), 0), enosys, "x32 call {nr}");
        }
    }
}
