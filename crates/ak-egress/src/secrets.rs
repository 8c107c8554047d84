//! A sandbox's secrets as the helper holds them: which placeholder stands for which value,
//! for which hosts, and what to do when a placeholder heads elsewhere.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use ak_core::egress::HostPattern;
use ak_core::secrets::OnLeak;
use serde::{Deserialize, Serialize};

use crate::audit::{AuditSink, Event, Verdict};
use crate::ca::{CaPem, SandboxCa};
use crate::error::EgressError;
use crate::scan::{Detector, Masker};

/// One secret rule with its value, as the host writes it into the policy file (which only
/// the host can read).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireSecret {
    pub key: String,
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    pub placeholder: String,
    pub value: String,
}

impl std::fmt::Debug for WireSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireSecret")
            .field("key", &self.key)
            .field("host", &self.host)
            .field("header", &self.header)
            .field("placeholder", &self.placeholder)
            .finish_non_exhaustive()
    }
}

/// The secrets part of the policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretPolicy {
    pub rules: Vec<WireSecret>,
    #[serde(default)]
    pub on_leak: OnLeak,
    pub ca: CaPem,
    /// A PEM file of roots trusted for upstream servers besides the host's own (tests
    /// point it at their test CA; `[network] upstream_ca`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ca: Option<PathBuf>,
}

/// A rule, checked.
pub struct Rule {
    pub key: String,
    pub host: HostPattern,
    pub header: Option<String>,
    pub placeholder: String,
    pub value: String,
}

/// Prints no value.
impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("key", &self.key)
            .field("host", &self.host)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// What the helper needs to intercept a sandbox's secret hosts.
pub struct Secrets {
    pub rules: Vec<Rule>,
    pub on_leak: OnLeak,
    pub ca: SandboxCa,
    /// Upstream TLS: the host's roots (and `upstream_ca`), HTTP/1.1 only.
    pub client: Arc<rustls::ClientConfig>,
    /// The sandbox's init, killed on a leak when `on_leak` is `kill`: given at start, or
    /// (a VM's) once its hypervisor connects ([`Secrets::stops`]).
    pub(crate) init: OnceLock<OwnedFd>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("rules", &self.rules)
            .field("on_leak", &self.on_leak)
            .finish_non_exhaustive()
    }
}

impl Secrets {
    pub fn load(
        policy: &SecretPolicy,
        sandbox: &str,
        init: Option<OwnedFd>,
    ) -> Result<Secrets, EgressError> {
        let rules = policy
            .rules
            .iter()
            .map(|rule| {
                Ok(Rule {
                    key: rule.key.clone(),
                    host: rule
                        .host
                        .parse()
                        .map_err(|e| EgressError::Usage(format!("secret {}: {e}", rule.key)))?,
                    header: rule.header.clone(),
                    placeholder: rule.placeholder.clone(),
                    value: rule.value.clone(),
                })
            })
            .collect::<Result<Vec<Rule>, EgressError>>()?;
        let hosts: Vec<HostPattern> = unique(rules.iter().map(|r| r.host.clone()));
        let ca = SandboxCa::load(&policy.ca, sandbox, &hosts)?;
        let client = Arc::new(client_config(policy.upstream_ca.as_deref())?);
        let secrets = Secrets {
            rules,
            on_leak: policy.on_leak,
            ca,
            client,
            init: OnceLock::new(),
        };
        if let Some(init) = init {
            secrets.stops(init);
        }
        Ok(secrets)
    }

    /// Makes `init` (a pidfd) the process a leak stops under `on_leak = "kill"`; the
    /// first one given stays.
    pub fn stops(&self, init: OwnedFd) {
        let _ = self.init.set(init);
    }

    /// Whether connections named `name` are intercepted (it is one of a secret's hosts).
    pub fn intercepts(&self, name: &str) -> bool {
        self.rules.iter().any(|rule| rule.host.matches(name))
    }

    /// A detector of every placeholder (index = rule index).
    pub fn detector(&self) -> Detector {
        Detector::new(self.rules.iter().map(|r| r.placeholder.as_bytes()))
    }

    /// A masker of every value.
    pub fn masker(&self) -> Masker {
        Masker::new(
            self.rules
                .iter()
                .map(|r| (r.value.as_bytes(), r.placeholder.as_bytes())),
        )
    }

    /// Whether the placeholder of rule `index` may go to a connection named by `names`
    /// (some rule with that placeholder names one of them).
    pub fn may_go(&self, index: usize, names: &[String]) -> bool {
        let placeholder = &self.rules[index].placeholder;
        self.rules
            .iter()
            .filter(|rule| &rule.placeholder == placeholder)
            .any(|rule| names.iter().any(|name| rule.host.matches(name)))
    }

    /// The first placeholder in `bytes` that may not go to `names` (a request may carry an
    /// allowed placeholder and a leaking one, so every rule is tried).
    pub fn leak_in(&self, bytes: &[u8], names: &[String]) -> Option<usize> {
        (0..self.rules.len()).find(|&index| {
            memchr::memmem::find(bytes, self.rules[index].placeholder.as_bytes()).is_some()
                && !self.may_go(index, names)
        })
    }

    /// Reports the leak of rule `index` towards `names`, and stops the sandbox when
    /// `on_leak` says so.
    pub fn leaked(&self, audit: &dyn AuditSink, mut event: Event, index: usize, names: &[String]) {
        let rule = &self.rules[index];
        let stopped = match (&self.on_leak, self.init.get()) {
            (OnLeak::Kill, Some(init)) => {
                match rustix::process::pidfd_send_signal(init, rustix::process::Signal::KILL) {
                    Ok(()) => "; the sandbox was stopped (on_leak = kill)".to_string(),
                    Err(error) => format!("; stopping the sandbox failed: {error}"),
                }
            }
            (OnLeak::Kill, None) => {
                "; the sandbox could not be stopped (no process of it is known)".to_string()
            }
            _ => String::new(),
        };
        event.verdict = Verdict::Denied;
        event.closed = false;
        event.rule = format!(
            "the placeholder of secret {} was sent to {}, not one of its hosts: blocked{stopped}",
            rule.key,
            if names.is_empty() {
                "an unnamed destination".to_string()
            } else {
                names.join(",")
            }
        );
        audit.record(&event);
    }
}

fn unique<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// TLS towards real servers: certificates checked against the host's roots (and `extra`).
fn client_config(extra: Option<&std::path::Path>) -> Result<rustls::ClientConfig, EgressError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| EgressError::Tls(format!("read {}: {e}", path.display())))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EgressError::Tls(format!("read {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(EgressError::Tls(format!(
                "{} holds no certificate",
                path.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| EgressError::Tls(format!("{}: {e}", path.display())))?;
        }
    } else if added == 0 {
        return Err(EgressError::Tls(
            "the host has no trusted root certificates to check secret hosts against".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EgressError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
