//! `[images]` in the user's config file: how the image store reaches registries.
//!
//! ```toml
//! [images]
//! insecure_registries = ["registry.lan:5000"]   # TLS not verified; plain HTTP allowed
//! ca_files = ["/etc/agentkernel/registry-ca.pem"] # extra certificate authorities (PEM)
//! docker_config = true                           # read ~/.docker/config.json `auths`
//! [images.credentials."registry.lan:5000"]
//! username = "me"
//! password_env = "REGISTRY_PASSWORD"             # or `password = "…"`
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::user_config_file;
use crate::error::ConfigError;

/// The `[images]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageOptions {
    /// Registries (`host[:port]`) whose certificates are not verified and that may speak
    /// plain HTTP. Registries on loopback may speak plain HTTP without being listed.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Extra certificate authorities (absolute paths of PEM files).
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
    /// Whether Docker's `~/.docker/config.json` logins are used (default true).
    pub docker_config: Option<bool>,
    /// Logins by registry (`host[:port]`, `docker.io` for Docker Hub).
    #[serde(default)]
    pub credentials: BTreeMap<String, RegistryLogin>,
}

/// One registry login: a password, or the environment variable that holds it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryLogin {
    pub username: String,
    pub password: Option<String>,
    pub password_env: Option<String>,
}

impl std::fmt::Debug for RegistryLogin {
    // Never the password: settings are printed in errors and logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("username", &self.username)
            .field("password_env", &self.password_env)
            .finish_non_exhaustive()
    }
}

fn invalid(reason: String) -> ConfigError {
    ConfigError::Parse {
        path: user_config_file().unwrap_or_default(),
        message: format!("[images] {reason}"),
    }
}

/// `host`, `host:port`, `[v6]:port`: what image references name registries by.
fn check_registry(name: &str, key: &str) -> Result<(), ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-:[]".contains(c);
    if name.is_empty() || name.len() > 255 || !name.chars().all(allowed) {
        return Err(invalid(format!(
            "{key}: {name:?} is not a registry (host or host:port, no scheme or path)"
        )));
    }
    Ok(())
}

impl ImageOptions {
    /// These options, checked: registry names, absolute CA paths, one password source
    /// per login.
    pub fn checked(&self) -> Result<ImageOptions, ConfigError> {
        for registry in &self.insecure_registries {
            check_registry(registry, "insecure_registries")?;
        }
        for path in &self.ca_files {
            if !path.is_absolute() {
                return Err(invalid(format!(
                    "ca_files: {} is not an absolute path",
                    path.display()
                )));
            }
        }
        for (registry, login) in &self.credentials {
            check_registry(registry, "credentials")?;
            if login.username.is_empty() {
                return Err(invalid(format!(
                    "credentials.{registry:?}: username is empty"
                )));
            }
            if login.password.is_some() == login.password_env.is_some() {
                return Err(invalid(format!(
                    "credentials.{registry:?}: give exactly one of password and password_env"
                )));
            }
        }
        Ok(self.clone())
    }

    /// Whether Docker's logins are read.
    pub fn use_docker_config(&self) -> bool {
        self.docker_config.unwrap_or(true)
    }
}

impl RegistryLogin {
    /// The password, from the config or its environment variable (which must be set and
    /// not empty).
    pub fn password(&self, registry: &str) -> Result<String, ConfigError> {
        if let Some(password) = &self.password {
            return Ok(password.clone());
        }
        let var = self.password_env.as_deref().unwrap_or_default();
        match std::env::var(var) {
            Ok(value) if !value.is_empty() => Ok(value),
            _ => Err(invalid(format!(
                "credentials.{registry:?}: ${var} is not set (or empty)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {

    use crate::config::ConfigFile;

    #[test]
    fn images_table_is_parsed_and_checked() {
        let file: ConfigFile = toml::from_str(
            "[images]\ninsecure_registries = [\"r.lan:5000\"]\nca_files = [\"/etc/ca.pem\"]\n\
             docker_config = false\n[images.credentials.\"r.lan:5000\"]\nusername = \"me\"\npassword = \"pw\"\n",
        )
        .unwrap();
        let images = file.images.checked().unwrap();
        assert_eq!(images.insecure_registries, vec!["r.lan:5000"]);
        assert!(!images.use_docker_config());
        let login = &images.credentials["r.lan:5000"];
        assert_eq!(login.password("r.lan:5000").unwrap(), "pw");
        assert!(
            !format!("{login:?}").contains("pw"),
            "Debug hides the password"
        );

        assert!(toml::from_str::<ConfigFile>("[images]\ninsecure = []\n").is_err());
        let bad = |text: &str| toml::from_str::<ConfigFile>(text).unwrap().images.checked();
        assert!(bad("[images]\ninsecure_registries = [\"https://r.lan\"]\n").is_err());
        assert!(bad("[images]\nca_files = [\"ca.pem\"]\n").is_err());
        assert!(bad("[images.credentials.\"r\"]\nusername = \"u\"\n").is_err());
        assert!(
            bad("[images.credentials.\"r\"]\nusername = \"u\"\npassword = \"p\"\npassword_env = \"P\"\n")
                .is_err()
        );
        let env = toml::from_str::<ConfigFile>(
            "[images.credentials.\"r\"]\nusername = \"u\"\npassword_env = \"AK_TEST_SURELY_UNSET_VAR\"\n",
        )
        .unwrap();
        assert!(env.images.credentials["r"].password("r").is_err());
    }
}
