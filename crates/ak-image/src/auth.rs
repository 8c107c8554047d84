//! Registry credentials: the user's own (from our config) first, then Docker's
//! `config.json` `auths`. Credential helpers (`credsStore`) are not run.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::error::ImageError;
use crate::{PullOptions, RegistryCredential};

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The login for `registry`, or anonymous.
pub(crate) fn auth_for(registry: &str, options: &PullOptions) -> Result<RegistryAuth, ImageError> {
    if let Some(c) = options
        .credentials
        .iter()
        .find(|c| same_registry(&c.registry, registry))
    {
        return Ok(RegistryAuth::Basic(c.username.clone(), c.password.clone()));
    }
    if let Some(path) = &options.docker_config
        && let Some(c) = docker_credential(path, registry)?
    {
        return Ok(RegistryAuth::Basic(c.username, c.password));
    }
    Ok(RegistryAuth::Anonymous)
}

/// Docker Hub goes by several names in `auths`.
fn same_registry(configured: &str, registry: &str) -> bool {
    let normal = |r: &str| {
        let r = r
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let r = r.split('/').next().unwrap_or(r);
        match r {
            "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
            other => other.to_string(),
        }
    };
    normal(configured) == normal(registry)
}

fn docker_credential(
    path: &Path,
    registry: &str,
) -> Result<Option<RegistryCredential>, ImageError> {
    let bad = |why: String| ImageError::Credentials {
        path: path.to_path_buf(),
        why,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let config: DockerConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let Some((key, entry)) = config
        .auths
        .iter()
        .find(|(k, _)| same_registry(k, registry))
    else {
        return Ok(None);
    };
    let (username, password) = match (&entry.auth, &entry.username, &entry.password) {
        (Some(auth), _, _) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| bad(format!("auths.{key}.auth: {e}")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| bad(format!("auths.{key}.auth is not UTF-8")))?;
            let (user, pass) = decoded
                .split_once(':')
                .ok_or_else(|| bad(format!("auths.{key}.auth is not user:password")))?;
            (user.to_string(), pass.to_string())
        }
        (None, Some(user), Some(pass)) => (user.clone(), pass.clone()),
        // An entry with neither (a credential helper's placeholder) gives no login.
        _ => return Ok(None),
    };
    Ok(Some(RegistryCredential {
        registry: key.clone(),
        username,
        password,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_auths_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
                "127.0.0.1:5000":{"username":"a","password":"b"},"x.io":{}}}"#,
        )
        .unwrap();
        let c = docker_credential(&path, "docker.io").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("user", "pass"));
        let c = docker_credential(&path, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("a", "b"));
        assert!(docker_credential(&path, "x.io").unwrap().is_none());
        assert!(docker_credential(&path, "y.io").unwrap().is_none());
        std::fs::write(&path, r#"{"auths":{"z.io":{"auth":"!!"}}}"#).unwrap();
        assert!(matches!(
            docker_credential(&path, "z.io"),
            Err(ImageError::Credentials { .. })
        ));
    }

    #[test]
    fn configured_credentials_come_first() {
        let options = PullOptions {
            credentials: vec![RegistryCredential {
                registry: "r.io".into(),
                username: "u".into(),
                password: "p".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            auth_for("r.io", &options).unwrap(),
            RegistryAuth::Basic("u".into(), "p".into())
        );
        assert_eq!(auth_for("s.io", &options).unwrap(), RegistryAuth::Anonymous);
    }
}
