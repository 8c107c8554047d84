//! The per-sandbox certificate authority of secret interception: generated on the host when
//! the sandbox starts (a new one at every start), its certificate installed in the sandbox,
//! its key kept in the host-only policy file. It signs a leaf certificate for each secret
//! host the sandbox connects to, and its name constraints let it sign for those hosts only,
//! so that even its key could not impersonate any other site.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ak_core::egress::HostPattern;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, GeneralSubtree, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

use crate::error::EgressError;

/// A CA as the host hands it to the helper (PEM).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaPem {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for CaPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaPem { key: <redacted> }")
    }
}

fn tls_error(what: &str) -> impl FnOnce(rcgen::Error) -> EgressError + '_ {
    move |error| EgressError::Tls(format!("{what}: {error}"))
}

/// The CA's parameters: the same at generation and when the helper loads it, since the
/// issuer of a leaf is named from them.
fn ca_params(sandbox: &str, hosts: &[HostPattern]) -> Result<CertificateParams, EgressError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(tls_error("CA parameters"))?;
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        format!(
            "agentkernel sandbox {} secrets CA",
            &sandbox[..sandbox.len().min(12)]
        ),
    );
    name.push(DnType::OrganizationName, "agentkernel");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: hosts
            .iter()
            .map(|host| match host {
                HostPattern::Exact(name) | HostPattern::Subdomains(name) => {
                    GeneralSubtree::DnsName(name.clone())
                }
            })
            .collect(),
        excluded_subtrees: Vec::new(),
    });
    Ok(params)
}

/// A fresh CA for `sandbox` that may sign for `hosts` only.
pub fn generate(sandbox: &str, hosts: &[HostPattern]) -> Result<CaPem, EgressError> {
    let key = KeyPair::generate().map_err(tls_error("generate the CA key"))?;
    let cert = ca_params(sandbox, hosts)?
        .self_signed(&key)
        .map_err(tls_error("sign the CA"))?;
    Ok(CaPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The CA loaded in the helper, with the leaves it signed so far.
pub struct SandboxCa {
    issuer: Issuer<'static, KeyPair>,
    leaves: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for SandboxCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SandboxCa { .. }")
    }
}

impl SandboxCa {
    pub fn load(
        pem: &CaPem,
        sandbox: &str,
        hosts: &[HostPattern],
    ) -> Result<SandboxCa, EgressError> {
        let key = KeyPair::from_pem(&pem.key).map_err(tls_error("read the CA key"))?;
        Ok(SandboxCa {
            issuer: Issuer::new(ca_params(sandbox, hosts)?, key),
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// A certificate and key for `name`, signed by this CA (made once per name).
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, EgressError> {
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(leaf) = leaves.get(name) {
            return Ok(leaf.clone());
        }
        let key = KeyPair::generate().map_err(tls_error("generate a leaf key"))?;
        let mut params =
            CertificateParams::new(vec![name.to_string()]).map_err(tls_error("leaf name"))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(tls_error("sign a leaf"))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
            .map_err(|e| EgressError::Tls(format!("leaf key: {e}")))?;
        let leaf = Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(cert.der().to_vec())],
            signer,
        ));
        leaves.insert(name.to_string(), leaf.clone());
        Ok(leaf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_chain_to_the_ca_for_its_hosts_only() {
        let hosts: Vec<HostPattern> = vec!["api.example.com".parse().unwrap()];
        let pem = generate("0123456789abcdef", &hosts).unwrap();
        assert!(pem.cert.contains("BEGIN CERTIFICATE"));
        assert!(!format!("{pem:?}").contains("PRIVATE"));
        let ca = SandboxCa::load(&pem, "0123456789abcdef", &hosts).unwrap();
        let leaf = ca.leaf("api.example.com").unwrap();
        assert!(Arc::ptr_eq(&leaf, &ca.leaf("api.example.com").unwrap()));

        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pem.cert.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let verify = |leaf: &CertifiedKey, name: &str| {
            verifier.verify_server_cert(
                &leaf.cert[0],
                &[],
                &rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(),
                &[],
                now,
            )
        };
        use rustls::client::danger::ServerCertVerifier;
        assert!(verify(&leaf, "api.example.com").is_ok());
        // Signed all the same, a leaf for another name breaks the name constraints.
        let other = ca.leaf("bank.example.net").unwrap();
        assert!(verify(&other, "bank.example.net").is_err());
    }
}
