//! A stored image's configuration applied to the commands that run in it, as Docker
//! applies it: `Env` before the sandbox's own environment (which wins), `WorkingDir` as
//! the directory commands start in unless the user chose a workdir, `User` unless the
//! command names one (resolved by the agent in the image's own `/etc/passwd`), and, for a
//! run, `Entrypoint` before the command, or before `Cmd` when no command is given. Every
//! command in a sandbox of a stored image, whatever its backend and front end, goes
//! through [`apply`]; `exec` in a running sandbox is `docker exec`: no entrypoint.

use ak_core::image::MICROVM_BASE_IMAGE;
use ak_core::spec::DEFAULT_WORKDIR;
use ak_core::{BackendKind, ExecSpec, ImageRef, SandboxSpec};
use ak_image::{NoProgress, PullPolicy};

use crate::error::ServiceError;
use crate::{Service, settle_image};

impl Service {
    /// Makes `spec`'s image concrete for its backend: `auto` by the command (see
    /// [`settle_image`]), then, for a backend that stacks image layers, a named OCI image
    /// from the store, pulled as `pull` says. Every path to a sandbox (run, pooled run,
    /// create) comes through here, so a bad image is one clear error before anything is
    /// built, and never reaches a pool.
    pub async fn prepare_image(
        &self,
        spec: &mut SandboxSpec,
        command: Option<&[String]>,
        pull: PullPolicy,
    ) -> Result<(), ServiceError> {
        settle_image(spec, command);
        let ImageRef::Oci(name) = &spec.image else {
            return Ok(());
        };
        if spec.backend == BackendKind::Microvm {
            // A VM boots a disk built from the store's layers, pulled into the store as on
            // every backend: no container engine is needed. Only an image that no
            // registry here has (one built locally, or Docker Hub out of reach) is left
            // to the engine's export, so an image only Docker has still boots. The default
            // Debian root is `setup`'s, never an OCI image.
            if name == MICROVM_BASE_IMAGE {
                return Ok(());
            }
            let stored = match pull {
                PullPolicy::Never => self.stored_image(name).await?,
                PullPolicy::Always => Some(self.ensure_image(name, pull, &NoProgress).await?),
                PullPolicy::Missing => match self.ensure_image(name, pull, &NoProgress).await {
                    Ok(stored) => Some(stored),
                    Err(ServiceError::Image(
                        ak_image::ImageError::UnknownImage { .. }
                        | ak_image::ImageError::Unreachable { .. },
                    )) => None,
                    Err(e) => return Err(e),
                },
            };
            if let Some(stored) = stored {
                spec.image = ImageRef::Stored(stored);
            }
            return Ok(());
        }
        if !self.backend(spec.backend)?.capabilities().image_layers {
            return Ok(());
        }
        let stored = self.ensure_image(name, pull, &NoProgress).await?;
        spec.image = ImageRef::Stored(stored);
        Ok(())
    }
}

/// What the command is to the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// The sandbox's command (`run`): the entrypoint applies.
    Run,
    /// Another command in a running sandbox (`exec`).
    Exec,
}

/// Applies the configuration of `spec`'s image, when it is a stored one, to `exec`.
pub(crate) fn apply(
    spec: &SandboxSpec,
    exec: &mut ExecSpec,
    entry: Entry,
) -> Result<(), ServiceError> {
    let ImageRef::Stored(image) = &spec.image else {
        return Ok(());
    };
    let config = &image.config;
    if entry == Entry::Run {
        let command = if exec.argv.is_empty() {
            config.cmd.clone()
        } else {
            std::mem::take(&mut exec.argv)
        };
        exec.argv = config.entrypoint.iter().cloned().chain(command).collect();
    }
    if !config.env.is_empty() {
        let mut env = Vec::with_capacity(config.env.len() + spec.env.len() + exec.env.len());
        for entry in &config.env {
            let Some((key, value)) = entry.split_once('=') else {
                return Err(ServiceError::InvalidInput(format!(
                    "image {}: its Env entry {entry:?} is not KEY=VALUE",
                    image.reference
                )));
            };
            env.push((key.to_string(), value.to_string()));
        }
        // The sandbox's environment is the agent's own already; repeated after the
        // image's, it wins over it, and the command's own entries over both.
        env.extend(spec.env.iter().cloned());
        env.append(&mut exec.env);
        exec.env = env;
    }
    if exec.cwd.is_none()
        && spec.workdir.as_os_str() == DEFAULT_WORKDIR
        && let Some(dir) = &config.working_dir
        && !dir.is_empty()
    {
        exec.cwd = Some(dir.clone());
    }
    if exec.user.is_none()
        && let Some(user) = &config.user
        && !user.is_empty()
    {
        exec.user = Some(user.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ak_core::config::{SandboxOptions, resolve};
    use ak_core::{ImageConfig, StoredImage};
    use std::path::Path;

    fn spec(config: ImageConfig, options: SandboxOptions) -> SandboxSpec {
        let mut spec = resolve(options, Path::new("/"), "id".into()).unwrap();
        spec.image = ImageRef::Stored(StoredImage {
            reference: "example/app:1".into(),
            digest: "sha256:0".into(),
            layers: vec!["/layers/a".into()],
            config,
            id_base: 0,
        });
        spec
    }

    fn python() -> ImageConfig {
        ImageConfig {
            env: vec!["PATH=/usr/local/bin:/usr/bin".into(), "LANG=C.UTF-8".into()],
            working_dir: Some("/usr/src/app".into()),
            user: Some("app".into()),
            entrypoint: vec!["/entry.sh".into()],
            cmd: vec!["python3".into()],
        }
    }

    fn exec(argv: &[&str]) -> ExecSpec {
        ExecSpec {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            ..ExecSpec::default()
        }
    }

    #[test]
    fn a_run_gets_the_entrypoint_before_its_command_or_the_images_cmd() {
        let spec = spec(python(), SandboxOptions::default());
        let mut given = exec(&["python3", "-c", "1"]);
        apply(&spec, &mut given, Entry::Run).unwrap();
        assert_eq!(given.argv, ["/entry.sh", "python3", "-c", "1"]);
        let mut none = exec(&[]);
        apply(&spec, &mut none, Entry::Run).unwrap();
        assert_eq!(none.argv, ["/entry.sh", "python3"]);
        // `exec` in a running sandbox is `docker exec`: the command as given.
        let mut other = exec(&["ls"]);
        apply(&spec, &mut other, Entry::Exec).unwrap();
        assert_eq!(other.argv, ["ls"]);
        assert_eq!(other.user.as_deref(), Some("app"));
    }

    #[test]
    fn the_sandboxs_environment_wins_over_the_images_and_the_commands_over_both() {
        let options = SandboxOptions {
            env: Some(vec!["LANG=fr_FR.UTF-8".into()]),
            ..SandboxOptions::default()
        };
        let spec = spec(python(), options);
        let mut run = exec(&["env"]);
        run.env = vec![("X".into(), "1".into())];
        apply(&spec, &mut run, Entry::Run).unwrap();
        let last = |key: &str| {
            run.env
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(last("LANG"), Some("fr_FR.UTF-8"));
        assert_eq!(last("PATH"), Some("/usr/local/bin:/usr/bin"));
        assert_eq!(last("X"), Some("1"));
    }

    #[test]
    fn working_dir_and_user_apply_unless_the_user_chose_them() {
        let spec_default = spec(python(), SandboxOptions::default());
        let mut run = exec(&["pwd"]);
        apply(&spec_default, &mut run, Entry::Run).unwrap();
        assert_eq!(run.cwd.as_deref(), Some("/usr/src/app"));
        assert_eq!(run.user.as_deref(), Some("app"));

        let mut chosen = exec(&["pwd"]);
        chosen.cwd = Some("/tmp".into());
        chosen.user = Some("root".into());
        apply(&spec_default, &mut chosen, Entry::Run).unwrap();
        assert_eq!(chosen.cwd.as_deref(), Some("/tmp"));
        assert_eq!(chosen.user.as_deref(), Some("root"));

        let with_workdir = spec(
            python(),
            SandboxOptions {
                workdir: Some("/srv/work".into()),
                ..SandboxOptions::default()
            },
        );
        let mut run = exec(&["pwd"]);
        apply(&with_workdir, &mut run, Entry::Run).unwrap();
        assert_eq!(
            run.cwd, None,
            "the sandbox's workdir is the agent's default"
        );
    }

    #[test]
    fn a_malformed_env_entry_of_the_image_is_a_clear_error() {
        let config = ImageConfig {
            env: vec!["NOEQUALS".into()],
            ..ImageConfig::default()
        };
        let spec = spec(config, SandboxOptions::default());
        let error = apply(&spec, &mut exec(&["true"]), Entry::Run).unwrap_err();
        assert!(error.to_string().contains("NOEQUALS"), "{error}");
    }

    #[test]
    fn other_images_are_left_alone() {
        let mut spec = spec(python(), SandboxOptions::default());
        spec.image = ImageRef::Host;
        let mut run = exec(&["true"]);
        apply(&spec, &mut run, Entry::Run).unwrap();
        assert_eq!(run, exec(&["true"]));
    }
}
