//! Pseudo-terminals for execs that ask for one.

use std::os::fd::{AsFd, OwnedFd};

use ak_protocol::PtySize;
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

/// Both ends of a new pseudo-terminal.
#[derive(Debug)]
pub(crate) struct Pty {
    /// The agent's end: output is read and input written here.
    pub(crate) master: OwnedFd,
    /// The command's terminal: its stdin, stdout and stderr.
    pub(crate) slave: OwnedFd,
}

/// Opens a pseudo-terminal of `size`.
pub(crate) fn open(size: PtySize) -> std::io::Result<Pty> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = rustix::pty::openpt(flags)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    // TIOCGPTPEER opens the slave through the master itself (Linux 4.13+), without a
    // lookup of /dev/pts/N by name that a different devpts mount could redirect.
    let slave = rustix::pty::ioctl_tiocgptpeer(&master, flags)?;
    resize(&master, size)?;
    Ok(Pty { master, slave })
}

/// Sets the terminal size (`TIOCSWINSZ`); the kernel sends SIGWINCH to the foreground group.
pub(crate) fn resize(master: impl AsFd, size: PtySize) -> std::io::Result<()> {
    rustix::termios::tcsetwinsize(
        master,
        Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}
