//! Booting a VM for a spec: the guest's artifacts, its runtime directory, network and
//! secrets, the kernel's and the agent's arguments, then the driver's start (or a
//! restore, from a saved state or a template).

use std::path::Path;

use ak_core::backend::Lifetime;
use ak_core::{NetworkMode, SandboxSpec};

use crate::error::MicrovmError;
use crate::guest::image::BaseSource;
use crate::guest::initramfs;
use crate::sandbox::MicrovmSandbox;
use crate::vm::Layout;
use crate::{
    Boot, DriverKind, EGRESS_GUEST_MAC, GuestMemory, HostNetwork, KERNEL_ARGS, MIN_MEMORY_MIB,
    MicrovmBackend, Nic, guest, net, serial, shares, tools, vm, vsock,
};
use ak_core::kvm::KvmSupport;

impl MicrovmBackend {
    fn boot_args(
        &self,
        spec: &SandboxSpec,
        lifetime: Lifetime,
        kvm: bool,
        net: Option<&net::Attachment>,
        secrets: Option<&Path>,
        template: bool,
    ) -> (String, String) {
        let mut kernel_args = KERNEL_ARGS.to_string();
        if !kvm && let Some(khz) = tools::host_tsc_khz() {
            // Emulated guests sometimes hang calibrating the TSC; told its rate they don't.
            kernel_args.push_str(&format!(" tsc_early_khz={khz}"));
        }
        let mode = match lifetime {
            // A template's agent serves nothing until the VM is restored, then the one
            // connection of each restored copy (see `template.rs`).
            Lifetime::Ephemeral if template => "--serial-once".to_string(),
            // A one-shot VM's agent serves its one connection, to the host's ready port:
            // one vsock connection set up per boot instead of two.
            Lifetime::Ephemeral => format!("--vsock-connect {}", vsock::READY_PORT),
            // A persistent QEMU VM's agent serves virtio-serial ports, which (unlike
            // vhost-user vsock) migrate: the VM can be saved with its memory.
            Lifetime::Persistent if self.driver == DriverKind::Qemu => {
                format!("--serial {}", serial::DATA_PORTS)
            }
            // A persistent VM's agent listens for every later connection and tells the
            // host it does by connecting to the ready port.
            Lifetime::Persistent => format!(
                "--vsock {} --ready-port {}",
                vsock::AGENT_PORT,
                vsock::READY_PORT
            ),
        };
        let mut init_args = format!("--guest {mode} --workdir {}", spec.workdir.display());
        if spec.root_dir.is_some() {
            init_args.push_str(" --layer-disk");
        }
        for share in shares(spec, secrets) {
            let access = if share.writable { "rw" } else { "ro" };
            init_args.push_str(&format!(
                " --share {}:{}:{access}",
                share.tag,
                share.guest.display()
            ));
        }
        if let Some(net) = net {
            init_args.push_str(&format!(" --net {}", net.guest_arg()));
            for nameserver in net::host_nameservers() {
                init_args.push_str(&format!(" --nameserver {nameserver}"));
            }
        }
        if secrets.is_some() && !spec.secrets.is_empty() {
            // The guest's roots join the CA in the bundle there (the host cannot read them).
            use ak_core::secrets::{CA_BUNDLE, CA_FILE, SYSTEM_BUNDLE};
            init_args.push_str(&format!(
                " --trust-bundle {CA_FILE},{CA_BUNDLE},{SYSTEM_BUNDLE}"
            ));
        }
        if spec.policy.network == NetworkMode::Allowlist {
            // The egress helper's link, as native sandboxes see it: it answers for the
            // gateway and is the resolver.
            init_args.push_str(&format!(
                " --net {}/24,{} --nameserver {}",
                ak_egress::SANDBOX_ADDRESS,
                ak_egress::GATEWAY,
                ak_egress::RESOLVER
            ));
        }
        (kernel_args, init_args)
    }

    /// Boots a VM for `spec`, or (`incoming`) starts it from a saved memory state, its
    /// memory where `memory` says (a one-shot VM from a template maps the template's).
    pub(crate) async fn boot(
        &self,
        spec: &SandboxSpec,
        lifetime: Lifetime,
        incoming: Option<&Path>,
        memory: GuestMemory<'_>,
    ) -> Result<MicrovmSandbox, MicrovmError> {
        self.check_spec(spec)?;
        self.hypervisor()?;
        let kernel = self.kernel()?;
        let source = BaseSource::from_image(&spec.image)?;
        let container = match &source {
            BaseSource::Container(name) => Some(self.container_disk(name).await?),
            _ => None,
        };
        let (cache, agent) = (self.cache.clone(), self.agent.clone());
        let layer_dir = spec.root_dir.clone();
        // Hashing a directory image and packing it are file-system heavy: off the runtime.
        let (base, initramfs, layer) = tokio::task::spawn_blocking(move || {
            let base = match container {
                Some(disk) => disk,
                None => guest::image::ensure(&cache, &source)?,
            };
            let layer = layer_dir
                .map(|dir| guest::layer_disk::ensure(&dir))
                .transpose()?;
            Ok::<_, MicrovmError>((base, initramfs::ensure(&cache, &agent)?, layer))
        })
        .await
        .map_err(|e| MicrovmError::Artifact(format!("preparing the guest failed: {e}")))??;
        let run_base = self.run_base();
        self.swept.call_once(|| {
            vm::sweep(&run_base);
            net::sweep(&run_base);
        });
        let kvm = KvmSupport::detect() == KvmSupport::Full;
        let memory_mib = (spec.resources.memory_bytes >> 20).max(MIN_MEMORY_MIB);
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let vcpus = spec
            .resources
            .cpus
            .map_or(1, |cpus| cpus.ceil() as u32)
            .clamp(1, host_cpus);
        let layout = Layout::create(run_base.join(&spec.id))?;
        // After the directory: a lease whose VM has no directory is an orphan to the sweep.
        let net_started = std::time::Instant::now();
        let net = if spec.policy.network != NetworkMode::Outbound {
            None
        } else {
            let attached = tokio::task::spawn_blocking({
                let (run_base, id) = (run_base.clone(), spec.id.clone());
                move || net::attach(&run_base, &id)
            })
            .await
            .map_err(|e| MicrovmError::Network(e.to_string()))
            .and_then(|attached| attached);
            match attached {
                Ok(net) => Some(net),
                Err(e) => {
                    let _ = layout.remove();
                    return Err(e);
                }
            }
        };
        let (secret_policy, secret_files) = match self.secrets(spec, &layout) {
            Ok(secrets) => secrets,
            Err(e) => {
                let _ = layout.remove();
                return Err(e);
            }
        };
        let secrets_dir = secret_files.as_ref().map(|files| files.dir.as_path());
        let egress = if spec.policy.network == NetworkMode::Allowlist {
            match self.start_egress(spec, &layout, secret_policy).await {
                Ok(egress) => Some(egress),
                Err(e) => {
                    let _ = layout.remove();
                    return Err(e);
                }
            }
        } else {
            None
        };
        let net_set_up = (net.is_some() || egress.is_some()).then(|| net_started.elapsed());
        let template = incoming.is_none() && self.starts_from_template(spec, lifetime);
        let (kernel_args, init_args) =
            self.boot_args(spec, lifetime, kvm, net.as_ref(), secrets_dir, template);
        let boot = Boot {
            kernel: &kernel,
            initramfs: &initramfs,
            base: &base,
            layer: layer.as_deref(),
            kernel_args,
            init_args,
            vcpus,
            memory_mib,
            shares: shares(spec, secrets_dir),
            nic: match (&net, &egress) {
                (Some(net), _) => Some(Nic {
                    tap: net.tap.clone(),
                    mac: net.mac(),
                    stream: None,
                }),
                (None, Some((socket, _))) => Some(Nic {
                    tap: String::new(),
                    mac: EGRESS_GUEST_MAC.into(),
                    stream: Some(socket.clone()),
                }),
                (None, None) => None,
            },
            serial_ports: if template {
                1
            } else if lifetime == Lifetime::Persistent && self.driver == DriverKind::Qemu {
                serial::DATA_PORTS
            } else {
                0
            },
            incoming,
            memory,
            track_dirty_pages: false,
        };
        // A template's VM has no network, secrets or egress helper: only the directory.
        let (template, template_made) = if template {
            match self.template_state(&boot, spec, kvm).await {
                Ok((files, made)) => (Some(files), made),
                Err(e) => {
                    let _ = layout.remove();
                    return Err(e);
                }
            }
        } else {
            (None, None)
        };
        let boot = match &template {
            Some(files) => Boot {
                incoming: Some(&files.state),
                memory: GuestMemory::MappedFrom(&files.memory),
                ..boot
            },
            None => boot,
        };
        let egress_helper = egress.map(|(_, helper)| helper);
        let mut started = self
            .start(
                &boot,
                &layout,
                lifetime,
                spec,
                kvm,
                HostNetwork {
                    nat: net.clone(),
                    egress_helper: egress_helper.clone(),
                },
            )
            .await;
        if let (Ok(sandbox), Some(took)) = (&mut started, net_set_up) {
            sandbox
                .boot_phases
                .insert(0, ("network set-up (lease, tap, NAT rules)", took));
        }
        if let (Ok(sandbox), Some(took)) = (&mut started, template_made) {
            sandbox.boot_phases.insert(
                0,
                ("template booted and saved (first VM of its kind)", took),
            );
        }
        if started.is_err() {
            if let Some(net) = &net
                && let Err(e) = net.release()
            {
                tracing::warn!("{e}");
            }
            if let Some(helper) = &egress_helper {
                ak_core::process::kill_recorded(helper, std::time::Duration::from_secs(2));
            }
            let _ = layout.remove();
        }
        started
    }
}
