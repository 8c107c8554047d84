//! Which pool a sandbox spec belongs to, and the spec of a new sandbox for a pool.

use ak_core::SandboxSpec;
use ak_core::spec::new_sandbox_id;

/// Whether a sandbox for `spec` can be prepared ahead in a warm pool (it has no host
/// mounts, volumes or source).
pub fn poolable(spec: &SandboxSpec) -> bool {
    pool_key(spec).is_some()
}

/// The pool a spec belongs to, or `None` when it cannot be prepared ahead (host mounts,
/// volumes and sources are each sandbox's own). Environment and timeout are per command,
/// so they are not part of it.
pub fn pool_key(spec: &SandboxSpec) -> Option<String> {
    // A sandbox with secrets has its own CA and placeholders: never made ahead.
    if !spec.mounts.is_empty()
        || !spec.volumes.is_empty()
        || spec.source.is_some()
        || !spec.secrets.is_empty()
        || !spec.secret_files.is_empty()
    {
        return None;
    }
    let resources = &spec.resources;
    // The allowlist is part of what a spare was made with (its egress helper enforces the
    // one it started with): a spare must never serve a request for another list.
    let allowlist = &spec.policy.allowlist;
    let allowed = allowlist
        .hosts
        .iter()
        .map(ToString::to_string)
        .chain(allowlist.cidrs.iter().map(|net| format!("cidr:{net}")))
        .chain(allowlist.ports.iter().map(|port| format!("port:{port}")))
        .collect::<Vec<_>>()
        .join(",");
    Some(format!(
        "{}/{}/{}/{}[{}]/mem={}/pids={}/cpus={}/workdir={}",
        spec.backend,
        spec.image,
        spec.policy.profile,
        spec.policy.network.as_str(),
        allowed,
        resources.memory_bytes,
        resources.pids,
        resources.cpus.map_or("unlimited".into(), |c| c.to_string()),
        spec.workdir.display()
    ))
}

/// A new sandbox's spec from a pool's template: a fresh id, and none of the requesting
/// run's environment or timeout (they go with that run's command, never into a spare
/// another caller may get).
pub(super) fn fresh(template: &SandboxSpec) -> SandboxSpec {
    let mut spec = template.clone();
    spec.env.clear();
    spec.timeout = None;
    spec.id = new_sandbox_id();
    spec.hostname = format!("ak-{}", &spec.id[..12]);
    spec
}
