//! The VMs' NAT and firewall, in chains of our own that the host's built-in chains jump
//! to: a VM reaches the outside through masquerading, never the host itself (everything
//! from a tap to a host address is dropped) nor another VM, and nothing new reaches it.
//! Each VM's rules carry a comment naming its sandbox, which is how they are removed.
//!
//! Through the `iptables` command: there is no maintained Rust library that manages
//! netfilter rules (nftables' netlink protocol is undocumented beyond libnftnl), and the
//! command works with both of its backends (legacy and nf_tables).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

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
    crate::tools::find_program(IPTABLES).or_else(|| {
        ["/usr/sbin/iptables", "/sbin/iptables"]
            .into_iter()
            .map(PathBuf::from)
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

fn iptables(program: &PathBuf, args: &[String]) -> Result<String, MicrovmError> {
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

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// Makes our chains and the jumps to them, if missing (the caller holds the network lock,
/// so no other agentkernel process does this at the same time).
fn ensure_chains(program: &PathBuf) -> Result<(), MicrovmError> {
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
    let program = program().ok_or_else(|| MicrovmError::MissingTool {
        program: IPTABLES.into(),
        hint: "install Debian's iptables package".into(),
    })?;
    ensure_chains(&program)?;
    let comment = comment(sandbox);
    for (table, chain, rule) in rules(tap, guest, network) {
        let mut args = strings(&["-t", table, "-A", chain]);
        args.extend(rule);
        args.extend(strings(&["-m", "comment", "--comment", &comment]));
        iptables(&program, &args)?;
    }
    Ok(())
}

/// The `-D` commands that remove the rules marked `comment` from `listing` (the output of
/// `iptables -t TABLE -S CHAIN`).
pub fn deletions(table: &str, listing: &str, comment: &str) -> Vec<Vec<String>> {
    listing
        .lines()
        .filter(|line| line.starts_with("-A "))
        .map(|line| {
            // iptables quotes comments; ours have no spaces, so words split at spaces.
            line.split_whitespace()
                .skip(1)
                .map(|word| word.trim_matches('"').to_string())
                .collect::<Vec<_>>()
        })
        .filter(|rule| rule.iter().any(|word| word == comment))
        .map(|rule| {
            let mut args = strings(&["-t", table, "-D"]);
            args.extend(rule);
            args
        })
        .collect()
}

/// Removes `sandbox`'s rules; none is no error. Our chains and jumps stay (empty chains
/// cost nothing, and removing them would race with another process adding a VM).
pub fn remove(sandbox: &str) -> Result<(), MicrovmError> {
    let Some(program) = program() else {
        return Ok(());
    };
    let comment = comment(sandbox);
    let mut first_error = None;
    for (table, chain, _) in CHAINS {
        let Ok(listing) = iptables(&program, &strings(&["-t", table, "-S", chain])) else {
            continue;
        };
        for args in deletions(table, &listing, &comment) {
            if let Err(e) = iptables(&program, &args) {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
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
        assert_eq!(
            deletions("nat", listing, &comment("abc")),
            vec![strings(&[
                "-t",
                "nat",
                "-D",
                "AGENTKERNEL-VM-NAT",
                "-s",
                "10.213.0.12/30",
                "!",
                "-o",
                "akv3",
                "-m",
                "comment",
                "--comment",
                "agentkernel-vm:abc",
                "-j",
                "MASQUERADE"
            ])]
        );
        assert!(deletions("nat", listing, &comment("zzz")).is_empty());
    }
}
