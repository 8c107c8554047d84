//! Installing seccomp filters the host built (`--seccomp FILE`), for backends that cannot
//! install them before the agent starts (gVisor: its kernel runs the filters of its own
//! processes). The agent installs them before it serves anything, so they bind the agent
//! and every command it starts, as the native backend's do. The file holds, for each
//! program in order, its instruction count as a little-endian `u32`, then each instruction
//! as `code: u16, jt: u8, jf: u8, k: u32`, little-endian (written by
//! `ak_native::seccomp::filters_for_agent`).

use std::path::Path;

/// Reads the programs in `path` and installs them, in order. Fails closed: an unreadable
/// or malformed file, or a kernel that refuses a program, is an error the agent exits on.
pub(crate) fn install_from(path: &Path) -> std::io::Result<()> {
    let bytes = std::fs::read(path)?;
    let programs = parse(&bytes)?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes no pointers; required before an
    // unprivileged process may install a filter.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    for mut program in programs {
        let fprog = libc::sock_fprog {
            len: u16::try_from(program.len()).map_err(|_| malformed("a program is too long"))?,
            filter: program.as_mut_ptr(),
        };
        // SAFETY: `fprog` points at `program`, alive for the call; the kernel copies it.
        let installed = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            )
        };
        if installed != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn malformed(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("malformed seccomp file: {what}"),
    )
}

fn parse(mut bytes: &[u8]) -> std::io::Result<Vec<Vec<libc::sock_filter>>> {
    let mut programs = Vec::new();
    while !bytes.is_empty() {
        let (count, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| malformed("a truncated count"))?;
        let count = u32::from_le_bytes(*count) as usize;
        let length = count
            .checked_mul(8)
            .filter(|&length| length <= rest.len())
            .ok_or_else(|| malformed("a truncated program"))?;
        if count == 0 {
            return Err(malformed("an empty program"));
        }
        let (body, rest) = rest.split_at(length);
        programs.push(
            body.chunks_exact(8)
                .map(|i| libc::sock_filter {
                    code: u16::from_le_bytes([i[0], i[1]]),
                    jt: i[2],
                    jf: i[3],
                    k: u32::from_le_bytes([i[4], i[5], i[6], i[7]]),
                })
                .collect(),
        );
        bytes = rest;
    }
    if programs.is_empty() {
        return Err(malformed("no program"));
    }
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_read_in_order_and_bad_files_refused() {
        let mut bytes = 1u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0x06, 0x00, 1, 2, 0, 0, 0xff, 0x7f]);
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&[0x20, 0, 0, 0, 4, 0, 0, 0]);
        bytes.extend_from_slice(&[0x06, 0, 0, 0, 0, 0, 0, 0]);
        let programs = parse(&bytes).unwrap();
        assert_eq!(programs.len(), 2);
        assert_eq!(programs[0][0].code, 6);
        assert_eq!((programs[0][0].jt, programs[0][0].jf), (1, 2));
        assert_eq!(programs[0][0].k, 0x7fff_0000);
        assert_eq!(programs[1][0].k, 4);
        assert!(parse(&[]).is_err());
        assert!(parse(&bytes[..bytes.len() - 1]).is_err());
        assert!(parse(&[0, 0, 0, 0]).is_err());
        assert!(parse(&[1, 0]).is_err());
    }
}
