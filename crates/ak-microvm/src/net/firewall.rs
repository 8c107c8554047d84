//! The VMs' NAT and firewall, in chains of our own that the host's built-in chains jump
//! to: a VM reaches the outside through masquerading, never the host itself (everything
//! from a tap to a host address is dropped), another VM or a link-local address, and
//! nothing new reaches it.
//! Each VM's rules carry a comment naming its sandbox, which is how they are removed.
//!
//! Through the `iptables` and `iptables-restore` commands: there is no maintained Rust
//! library that manages netfilter rules (nftables' netlink protocol is undocumented beyond
//! libnftnl), and the commands work with both of their backends (legacy and nf_tables).
//! A VM's rules are added, and removed, in one `iptables-restore --noflush` batch.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::MicrovmError;

/// Our chains: (table, chain, the built-in chain that jumps to it).
pub const CHAINS: [(&str, &str, &str); 3] = [
    ("filter", "AGENTKERNEL-VM-IN", "INPUT"),
    ("filter", "AGENTKERNEL-VM-FWD", "FORWARD"),
    ("nat", "AGENTKERNEL-VM-NAT", "POSTROUTING"),
];
/// Every VM's tap name starts with this (`+` is iptables' wildcard).
pub const TAP_PREFIX: &str = "akv";

pub const IPTABLES: &str = "iptables";

/// `iptables`: on PATH, else where Debian puts it (root's PATH has sbin, others' may not).
pub fn program() -> Option<PathBuf> {
    find(IPTABLES)
}

/// `iptables-restore`, from the same package.
pub fn restore_program() -> Option<PathBuf> {
    find("iptables-restore")
}

fn find(name: &str) -> Option<PathBuf> {
    crate::tools::find_program(name).or_else(|| {
        ["/usr/sbin", "/sbin"]
            .into_iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|p| ak_core::process::is_executable(p))
    })
}

/// The comment marking `sandbox`'s rules.
pub fn comment(sandbox: &str) -> String {
    format!("agentkernel-vm:{sandbox}")
}

/// One VM's rules: (table, chain, rule), without the comment.
pub fn rules(
    tap: &str,
    guest: Ipv4Addr,
    network: Ipv4Addr,
) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let [(_, input, _), (_, forward, _), (nat_table, nat, _)] = CHAINS;
    let words = |text: &str| {
        text.split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let others = format!("{TAP_PREFIX}+");
    vec![
        // The host itself: nothing, whatever the address (its own, another VM's gateway).
        ("filter", input, words(&format!("-i {tap} -j DROP"))),
        // Only the guest's own address goes out (no spoofing past the masquerade).
        (
            "filter",
            forward,
            words(&format!("-i {tap} ! -s {guest}/32 -j DROP")),
        ),
        // Not to the host's link-local neighbours: a cloud's metadata service
        // (169.254.169.254) answers with the host's own credentials.
        (
            "filter",
            forward,
            words(&format!("-i {tap} -d 169.254.0.0/16 -j DROP")),
        ),
        // Not to another VM (nor back into its own tap).
        (
            "filter",
            forward,
            words(&format!("-i {tap} -o {others} -j DROP")),
        ),
        ("filter", forward, words(&format!("-i {tap} -j ACCEPT"))),
        (
            "filter",
            forward,
            words(&format!(
                "-o {tap} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
            )),
        ),
        ("filter", forward, words(&format!("-o {tap} -j DROP"))),
        (
            nat_table,
            nat,
            words(&format!("-s {network}/30 ! -o {tap} -j MASQUERADE")),
        ),
    ]
}

fn missing() -> MicrovmError {
    MicrovmError::MissingTool {
        program: IPTABLES.into(),
        hint: "install Debian's iptables package".into(),
    }
}

fn iptables(program: &Path, args: &[String]) -> Result<String, MicrovmError> {
    // -w: wait for the xtables lock instead of failing when another process holds it.
    let output = Command::new(program)
        .arg("-w")
        .args(args)
        .output()
        .map_err(MicrovmError::io(format!("run {}", program.display())))?;
    if !output.status.success() {
        return Err(MicrovmError::Network(format!(
            "iptables {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Applies `batch` (iptables-restore input) in one go, leaving every other rule alone:
/// one process and one atomic commit per table instead of one per rule (deleting rules
/// one by one cost ~17 ms each here).
fn restore(batch: &str) -> Result<(), MicrovmError> {
    let program = restore_program().ok_or_else(missing)?;
    let mut child = Command::new(&program)
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(MicrovmError::io(format!("run {}", program.display())))?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(batch.as_bytes()));
    let output = child
        .wait_with_output()
        .map_err(MicrovmError::io(format!("run {}", program.display())))?;
    if !output.status.success() || !matches!(written, Some(Ok(()))) {
        return Err(MicrovmError::Network(format!(
            "iptables-restore of\n{batch}failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// iptables-restore input for `lines` (table, `-A`/`-D` rule), grouped by table.
pub fn batch(lines: &[(&str, String)]) -> String {
    let mut text = String::new();
    for table in ["filter", "nat"] {
        let of_table: Vec<&String> = lines
            .iter()
            .filter(|(t, _)| *t == table)
            .map(|(_, line)| line)
            .collect();
        if of_table.is_empty() {
            continue;
        }
        text.push_str(&format!("*{table}\n"));
        for line in of_table {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("COMMIT\n");
    }
    text
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// Makes our chains and the jumps to them, if missing (the caller holds the network lock,
/// so no other agentkernel process does this at the same time).
fn ensure_chains(program: &Path) -> Result<(), MicrovmError> {
    for (table, chain, parent) in CHAINS {
        if iptables(program, &strings(&["-t", table, "-S", chain])).is_err() {
            iptables(program, &strings(&["-t", table, "-N", chain]))?;
        }
        let jump = strings(&["-t", table, "-C", parent, "-j", chain]);
        if iptables(program, &jump).is_err() {
            // First: a host firewall's own DROP or ACCEPT must not decide for the VMs.
            iptables(
                program,
                &strings(&["-t", table, "-I", parent, "1", "-j", chain]),
            )?;
        }
    }
    Ok(())
}

/// Adds `sandbox`'s rules.
pub fn add(
    sandbox: &str,
    tap: &str,
    guest: Ipv4Addr,
    network: Ipv4Addr,
) -> Result<(), MicrovmError> {
    let program = program().ok_or_else(missing)?;
    ensure_chains(&program)?;
    let comment = comment(sandbox);
    let lines: Vec<(&str, String)> = rules(tap, guest, network)
        .into_iter()
        .map(|(table, chain, rule)| {
            (
                table,
                format!(
                    "-A {chain} {} -m comment --comment {comment}",
                    rule.join(" ")
                ),
            )
        })
        .collect();
    restore(&batch(&lines))
}

/// The `-D` lines that remove the rules marked `comment` from `listing` (the output of
/// `iptables -S CHAIN`, whose quoting iptables-restore reads back).
pub fn deletions(listing: &str, comment: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| line.strip_prefix("-A "))
        // iptables quotes comments; ours have no spaces, so words split at spaces.
        .filter(|rule| {
            rule.split_whitespace()
                .any(|word| word.trim_matches('"') == comment)
        })
        .map(|rule| format!("-D {rule}"))
        .collect()
}

/// Removes `sandbox`'s rules; none is no error. Our chains and jumps stay (empty chains
/// cost nothing, and removing them would race with another process adding a VM).
pub fn remove(sandbox: &str) -> Result<(), MicrovmError> {
    let Some(program) = program() else {
        return Ok(());
    };
    let comment = comment(sandbox);
    let mut lines = Vec::new();
    for (table, chain, _) in CHAINS {
        let Ok(listing) = iptables(&program, &strings(&["-t", table, "-S", chain])) else {
            continue;
        };
        lines.extend(
            deletions(&listing, &comment)
                .into_iter()
                .map(|line| (table, line)),
        );
    }
    if lines.is_empty() {
        return Ok(());
    }
    restore(&batch(&lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_reaches_out_only_and_its_rules_are_found_by_comment() {
        let rules = rules(
            "akv3",
            Ipv4Addr::new(10, 213, 0, 14),
            Ipv4Addr::new(10, 213, 0, 12),
        );
        let text: Vec<String> = rules
            .iter()
            .map(|(table, chain, rule)| format!("{table} {chain} {}", rule.join(" ")))
            .collect();
        assert_eq!(
            text,
            [
                "filter AGENTKERNEL-VM-IN -i akv3 -j DROP",
                "filter AGENTKERNEL-VM-FWD -i akv3 ! -s 10.213.0.14/32 -j DROP",
                "filter AGENTKERNEL-VM-FWD -i akv3 -d 169.254.0.0/16 -j DROP",
                "filter AGENTKERNEL-VM-FWD -i akv3 -o akv+ -j DROP",
                "filter AGENTKERNEL-VM-FWD -i akv3 -j ACCEPT",
                "filter AGENTKERNEL-VM-FWD -o akv3 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "filter AGENTKERNEL-VM-FWD -o akv3 -j DROP",
                "nat AGENTKERNEL-VM-NAT -s 10.213.0.12/30 ! -o akv3 -j MASQUERADE",
            ]
        );
        // What `iptables -S` prints back; only this sandbox's rules are deleted, not one
        // whose id merely starts the same.
        let listing = "-N AGENTKERNEL-VM-NAT\n\
            -A AGENTKERNEL-VM-NAT -s 10.213.0.12/30 ! -o akv3 -m comment --comment \"agentkernel-vm:abc\" -j MASQUERADE\n\
            -A AGENTKERNEL-VM-NAT -s 10.213.0.16/30 ! -o akv4 -m comment --comment \"agentkernel-vm:abcd\" -j MASQUERADE\n";
        let deleted = deletions(listing, &comment("abc"));
        assert_eq!(
            deleted,
            [
                "-D AGENTKERNEL-VM-NAT -s 10.213.0.12/30 ! -o akv3 -m comment --comment \"agentkernel-vm:abc\" -j MASQUERADE"
            ]
        );
        assert!(deletions(listing, &comment("zzz")).is_empty());
        // One batch, a commit per table, tables without lines left out.
        assert_eq!(
            batch(&[
                ("nat", deleted[0].clone()),
                ("filter", "-D AGENTKERNEL-VM-IN -i akv3 -j DROP".into()),
            ]),
            format!(
                "*filter\n-D AGENTKERNEL-VM-IN -i akv3 -j DROP\nCOMMIT\n*nat\n{}\nCOMMIT\n",
                deleted[0]
            )
        );
        assert!(batch(&[]).is_empty());
    }
}
