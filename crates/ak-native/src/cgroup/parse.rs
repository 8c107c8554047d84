//! Parsers for the kernel's cgroup-related file formats (mountinfo, controller lists, keyed files).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// `(mount point, fstype, super options)` of each well-formed line of a mountinfo file.
pub(super) fn parse_mountinfo(text: &str) -> impl Iterator<Item = (PathBuf, &str, &str)> {
    text.lines().filter_map(|line| {
        // Optional fields sit before the " - " separator and paths have their spaces
        // escaped, so the separator is unambiguous.
        let (left, right) = line.split_once(" - ")?;
        let mount_point = PathBuf::from(unescape_octal(left.split(' ').nth(4)?));
        let mut right = right.split(' ');
        let fstype = right.next()?;
        Some((mount_point, fstype, right.nth(1).unwrap_or("")))
    })
}

/// Undoes the kernel's `\ooo` escaping of space, tab, newline and backslash in paths.
fn unescape_octal(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(bytes.len()), 0);
    while let Some(&byte) = bytes.get(i) {
        let digits = bytes
            .get(i + 1..i + 4)
            .filter(|d| byte == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match digits.map(|d| d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'))) {
            Some(value) => {
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(byte);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

/// Parses a space-separated controller list (`cgroup.controllers`, `cgroup.subtree_control`).
pub(super) fn parse_controllers(text: &str) -> BTreeSet<&str> {
    text.split_whitespace().collect()
}

/// Value of `key` in a flat keyed file such as `memory.events` or `memory.oom_control`.
pub(super) fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| match line.split_once(' ') {
        Some((k, v)) if k == key => v.trim().parse().ok(),
        _ => None,
    })
}

/// Parses `cgroup.procs`: one pid per line.
pub(super) fn parse_pids(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
