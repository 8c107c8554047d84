//! What every backend that runs the host's own root filesystem as a sandbox's image (the
//! native and gVisor backends) replaces, hides and adds: one list, so both sandboxes see
//! the same host.

/// Directories at the top of the host image that never come from the host as they are.
/// `proc`, `sys`, `dev`, `tmp`, `run`, `root` and `home` get fresh mounts; the rest stay empty.
pub const TOP_LEVEL_REPLACED: &[&str] = &[
    "proc",
    "sys",
    "dev",
    "tmp",
    "run",
    "root",
    "home",
    "mnt",
    "media",
    "boot",
    "lost+found",
];

/// Places inside the host image that hold secrets: hidden behind an empty tmpfs.
pub const HIDDEN_DIRS: &[&str] = &[
    "/etc/ssh",
    "/etc/ssl/private",
    "/etc/sudoers.d",
    "/var/lib/docker",
    "/var/lib/containers",
    "/var/lib/cloud",
    "/var/lib/sudo",
    "/var/lib/agentkernel",
    "/var/log",
    "/var/spool",
    "/var/mail",
];

/// Secret files inside the host image: hidden behind `/dev/null`.
pub const HIDDEN_FILES: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/security/opasswd",
];

/// Writable directories of every sandbox, with their modes.
pub const SCRATCH_DIRS: &[(&str, u32)] = &[
    ("/tmp", 0o1777),
    ("/run", 0o755),
    ("/root", 0o700),
    ("/home", 0o755),
];
