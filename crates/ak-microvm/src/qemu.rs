//! The QEMU driver: `qemu-system-x86_64 -M microvm` with the kernel loaded through PVH,
//! the base image on virtio-blk, and the agent's channel either vsock through the
//! `vhost-device-vsock` daemon (vhost-user; one-shot VMs) or virtio-serial ports on Unix
//! sockets (named VMs: unlike vhost-user, they migrate, so the VM can be saved with its
//! memory), with KVM where it takes ordinary guests and emulation (TCG) elsewhere.

use std::path::Path;
use std::time::Duration;

use ak_core::backend::Lifetime;
use ak_core::watch::SocketWatch;

use crate::error::MicrovmError;
use crate::tools;
use crate::vm::{self, Layout};
use crate::{Boot, GuestMemory, Launched};

/// How long the vsock daemon gets to create its control socket.
const DAEMON_START_LIMIT: Duration = Duration::from_secs(10);

/// The kernel command line QEMU's machine needs besides the common one: `reboot=t` (a
/// triple fault) is how a guest without ACPI makes QEMU, run with `-no-reboot`, exit.
pub const CMDLINE: &str = "reboot=t";

/// QEMU's microvm machine has 8 virtio-mmio transports of 512 bytes from this address,
/// with interrupts from 5, and gives the n-th `-device` the n-th transport from the top.
const MMIO_BASE: u64 = 0xfeb0_0000;
const MMIO_SIZE: u64 = 512;
const MMIO_TRANSPORTS: u64 = 8;
const MMIO_FIRST_IRQ: u64 = 5;
/// Our fixed devices, in `-device` order: the base disk, then the agent's channel (vsock
/// or virtio-serial); the layer disk, the network device (when there are) and the shares
/// follow.
const FIXED_DEVICES: u64 = 2;

/// How many 9p shares fit in the remaining transports.
pub fn max_shares(nic: bool, layer: bool) -> usize {
    (MMIO_TRANSPORTS - FIXED_DEVICES - u64::from(nic) - u64::from(layer)) as usize
}

/// `virtio_mmio.device=` declarations of our devices. QEMU can append them itself, but
/// after everything, so after the `--` that starts init's arguments, where the kernel
/// does not look; so they are declared here, before it (`auto-kernel-cmdline=off`).
fn device_declarations(devices: u64) -> String {
    (0..devices)
        .map(|n| {
            let slot = MMIO_TRANSPORTS - 1 - n;
            format!(
                "virtio_mmio.device={MMIO_SIZE}@{:#x}:{}",
                MMIO_BASE + slot * MMIO_SIZE,
                MMIO_FIRST_IRQ + slot
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The command line of `qemu-system-x86_64` for `boot`.
pub fn arguments(boot: &Boot, layout: &Layout, kvm: bool) -> Vec<String> {
    let memory = format!("{}M", boot.memory_mib);
    let mut args: Vec<String> = vec![
        // No ACPI: the kernel finds the virtio-mmio devices on its command line.
        "-M".into(),
        "microvm,acpi=off,auto-kernel-cmdline=off,memory-backend=mem".into(),
        "-accel".into(),
        if kvm { "kvm" } else { "tcg" }.into(),
        "-cpu".into(),
        if kvm { "host" } else { "max" }.into(),
        "-smp".into(),
        boot.vcpus.to_string(),
        "-m".into(),
        memory.clone(),
        "-object".into(),
        match boot.memory {
            // vhost-user needs the guest's memory shared with the vsock daemon.
            GuestMemory::Anonymous if boot.serial_ports == 0 => {
                format!("memory-backend-memfd,id=mem,size={memory},share=on")
            }
            // Nobody else maps it: private memory, where the pages a restore reads and
            // finds zero stay the kernel's one zero page. In a shared memfd each read
            // allocated a page: a restored 256 MiB guest took all 256 MiB (forks 287 MiB
            // PSS each against 124 MiB for a booted VM, docs/benchmarks.md).
            GuestMemory::Anonymous => format!("memory-backend-ram,id=mem,size={memory}"),
            // `share` decides QEMU's mapping: MAP_SHARED writes into the file, MAP_PRIVATE
            // copies a page on its first write and leaves the file as it is.
            GuestMemory::WrittenTo(file) => memory_file(&memory, file, "on"),
            GuestMemory::MappedFrom(file) => memory_file(&memory, file, "off"),
        },
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        // The machine protocol, for pause and resume (`stop`, `cont`).
        "-qmp".into(),
        format!(
            "unix:{},server=on,wait=off",
            escape_option(&layout.qmp_socket().to_string_lossy())
        ),
        "-kernel".into(),
        boot.kernel.display().to_string(),
        "-initrd".into(),
        boot.initramfs.display().to_string(),
        "-append".into(),
        boot.cmdline(&format!(
            "{CMDLINE} {}",
            device_declarations(
                FIXED_DEVICES
                    + u64::from(boot.layer.is_some())
                    + u64::from(boot.nic.is_some())
                    + boot.shares.len() as u64
            )
        )),
        "-chardev".into(),
        format!("file,id=console,path={}", layout.console().display()),
        "-serial".into(),
        "chardev:console".into(),
        // Read-only: every VM of an image shares the file, none writes it.
        "-drive".into(),
        format!(
            "id=base,file={},format=raw,if=none,readonly=on",
            boot.base.display()
        ),
        "-device".into(),
        "virtio-blk-device,drive=base".into(),
    ];
    if boot.serial_ports == 0 {
        args.extend([
            "-chardev".into(),
            format!(
                "socket,id=vsock,path={}",
                escape_option(&layout.vhost_socket().to_string_lossy())
            ),
            "-device".into(),
            "vhost-user-vsock-device,chardev=vsock".into(),
        ]);
    } else {
        args.extend(serial_arguments(layout, boot.serial_ports));
    }
    if let Some(layer) = boot.layer {
        // The guest's second disk (`/dev/vdb`): virtio-mmio devices are probed in the
        // order declared, the base disk first.
        args.push("-drive".into());
        args.push(format!(
            "id=layer,file={},format=raw,if=none",
            escape_option(&layer.to_string_lossy())
        ));
        args.push("-device".into());
        args.push("virtio-blk-device,drive=layer".into());
    }
    if let Some(nic) = &boot.nic {
        args.push("-netdev".into());
        match &nic.stream {
            // The egress helper listens there: frames each after its length.
            Some(socket) => args.push(format!(
                "stream,id=net0,server=off,addr.type=unix,addr.path={}",
                escape_option(&socket.to_string_lossy())
            )),
            // The tap exists already (root made it, persistent): QEMU only opens it, and
            // runs no script on it.
            None => args.push(format!(
                "tap,id=net0,ifname={},script=no,downscript=no",
                nic.tap
            )),
        }
        args.push("-device".into());
        args.push(format!("virtio-net-device,netdev=net0,mac={}", nic.mac));
    }
    for (i, share) in boot.shares.iter().enumerate() {
        // security_model=none: files keep QEMU's (the caller's) ownership on the host,
        // and the guest's chown requests are not applied to the host.
        let readonly = if share.writable { "" } else { ",readonly=on" };
        args.push("-fsdev".into());
        args.push(format!(
            "local,id=fs{i},path={},security_model=none{readonly}",
            escape_option(&share.host.to_string_lossy())
        ));
        args.push("-device".into());
        args.push(format!(
            "virtio-9p-device,fsdev=fs{i},mount_tag={}",
            share.tag
        ));
    }
    if boot.incoming.is_some() {
        // The state is loaded over QMP (`qmp::wait_restored`), after the migration
        // capabilities it was saved with are set, which QEMU 7.2 takes only there.
        args.push("-incoming".into());
        args.push("defer".into());
    }
    args
}

/// The virtio-serial device and its ports: the control port, then `ports` data ports,
/// each on a Unix socket QEMU listens on in the VM's directory. Port 0 is the console's
/// by QEMU's rule, so ours are numbered from 1.
fn serial_arguments(layout: &Layout, ports: u32) -> Vec<String> {
    let mut args = vec![
        "-device".into(),
        format!("virtio-serial-device,max_ports={}", ports + 2),
    ];
    let names = std::iter::once(ak_protocol::serial::CONTROL_PORT.to_string())
        .chain((0..ports).map(ak_protocol::serial::data_port));
    for (nr, name) in (1..).zip(names) {
        args.push("-chardev".into());
        args.push(format!(
            "socket,id={name},path={},server=on,wait=off",
            escape_option(&layout.serial_socket(&name).to_string_lossy())
        ));
        args.push("-device".into());
        args.push(format!("virtserialport,chardev={name},name={name},nr={nr}"));
    }
    args
}

/// The `-object` of guest memory in `file`, mapped shared or not (`share`).
fn memory_file(size: &str, file: &Path, share: &str) -> String {
    format!(
        "memory-backend-file,id=mem,size={size},mem-path={},share={share}",
        escape_option(&file.to_string_lossy())
    )
}

/// `text` as one word of a shell command (QEMU runs `exec:` migration commands with
/// `/bin/sh -c`).
pub(crate) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// A value inside QEMU's `key=value,…` option syntax: commas are doubled.
fn escape_option(value: &str) -> String {
    value.replace(',', ",,")
}

/// Starts the vsock daemon (for a vsock VM), then QEMU.
pub async fn launch(
    boot: &Boot<'_>,
    layout: &Layout,
    lifetime: Lifetime,
    kvm: bool,
) -> Result<Launched, MicrovmError> {
    let qemu = tools::require_program(tools::QEMU, tools::QEMU_HINT)?;
    if boot.serial_ports > 0 {
        let started = std::time::Instant::now();
        let (hypervisor, hypervisor_id) = vm::spawn(
            &qemu,
            &arguments(boot, layout, kvm),
            &layout.host_log(),
            lifetime,
        )?;
        return Ok(Launched {
            hypervisor,
            hypervisor_id,
            helper: None,
            phases: vec![("hypervisor process start", started.elapsed())],
        });
    }
    let daemon = tools::require_program(tools::VSOCK_DAEMON, tools::VSOCK_DAEMON_HINT)?;
    let daemon_started = std::time::Instant::now();
    let watch = SocketWatch::new(&layout.dir)
        .map_err(MicrovmError::io(format!("watch {}", layout.dir.display())))?;
    let daemon_args = vec![
        "--guest-cid".to_string(),
        "3".into(),
        "--socket".into(),
        layout.vhost_socket().display().to_string(),
        "--uds-path".into(),
        layout.vsock().display().to_string(),
    ];
    let (mut daemon_child, daemon_id) =
        vm::spawn(&daemon, &daemon_args, &layout.host_log(), lifetime)?;
    let control = layout.vhost_socket();
    let started = tokio::select! {
        started = watch.wait_for(&control, DAEMON_START_LIMIT) => started
            .map_err(|e| format!("{} did not start: {e}", tools::VSOCK_DAEMON)),
        status = daemon_child.wait() => Err(format!("{} exited ({})", tools::VSOCK_DAEMON,
            status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))),
    };
    if let Err(reason) = started {
        let _ = daemon_child.start_kill();
        return Err(MicrovmError::Boot {
            reason,
            log: layout.last_output(),
        });
    }
    let daemon_up = daemon_started.elapsed();
    let qemu_started = std::time::Instant::now();
    match vm::spawn(
        &qemu,
        &arguments(boot, layout, kvm),
        &layout.host_log(),
        lifetime,
    ) {
        Ok((hypervisor, hypervisor_id)) => Ok(Launched {
            hypervisor,
            hypervisor_id,
            helper: Some((daemon_child, daemon_id)),
            phases: vec![
                ("vsock daemon start", daemon_up),
                // QEMU runs the guest from its start: there is no separate instance start.
                ("hypervisor process start", qemu_started.elapsed()),
            ],
        }),
        Err(e) => {
            let _ = daemon_child.start_kill();
            Err(e)
        }
    }
}

/// Whether `path` is a QEMU new enough for `-M microvm` with vhost-user vsock (7.0+).
pub fn version(path: &Path) -> Option<String> {
    let output = std::process::Command::new(path)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .next()
        .and_then(|line| line.split("version ").nth(1))
        .map(|v| v.split_whitespace().next().unwrap_or(v).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_disk_is_read_only_and_vsock_goes_through_vhost_user() {
        let boot = Boot {
            kernel: Path::new("/k/vmlinux"),
            initramfs: Path::new("/k/init.cpio"),
            base: Path::new("/i/base.ext4"),
            layer: None,
            kernel_args: "console=ttyS0".into(),
            init_args: "--guest".into(),
            vcpus: 2,
            memory_mib: 256,
            shares: vec![crate::Share {
                tag: "share0".into(),
                host: "/srv/a,b".into(),
                guest: "/workspace".into(),
                writable: false,
            }],
            nic: None,
            serial_ports: 0,
            incoming: None,
            memory: GuestMemory::Anonymous,
            track_dirty_pages: false,
        };
        let layout = Layout {
            dir: "/run/vm".into(),
        };
        let args = arguments(&boot, &layout, false).join(" ");
        assert!(
            args.contains("file=/i/base.ext4,format=raw,if=none,readonly=on"),
            "{args}"
        );
        assert!(args.contains("-accel tcg"), "{args}");
        assert!(
            args.contains("memory-backend-memfd,id=mem,size=256M,share=on"),
            "{args}"
        );
        assert!(
            args.contains("socket,id=vsock,path=/run/vm/vhost.sock"),
            "{args}"
        );
        assert!(args.contains("-no-reboot"), "{args}");
        assert!(
            args.contains("-qmp unix:/run/vm/qmp.sock,server=on,wait=off"),
            "{args}"
        );
        assert!(
            args.contains("-fsdev local,id=fs0,path=/srv/a,,b,security_model=none,readonly=on -device virtio-9p-device,fsdev=fs0,mount_tag=share0"),
            "{args}"
        );
        assert!(args.contains("-smp 2 -m 256M"), "{args}");
        assert!(
            arguments(&boot, &layout, true)
                .join(" ")
                .contains("-accel kvm -cpu host")
        );
        // What QEMU 7.2 itself declares for two devices (read off a guest's dmesg).
        assert!(
            args.contains(
                "console=ttyS0 reboot=t virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=512@0xfeb00c00:11 virtio_mmio.device=512@0xfeb00a00:10 -- --guest"
            ),
            "{args}"
        );
        assert!(!args.contains("-netdev"), "no network unless asked: {args}");
    }

    #[test]
    fn a_nic_is_a_tap_on_the_next_transport_before_the_shares() {
        let boot = Boot {
            kernel: Path::new("/k/vmlinux"),
            initramfs: Path::new("/k/init.cpio"),
            base: Path::new("/i/base.ext4"),
            layer: None,
            kernel_args: "console=ttyS0".into(),
            init_args: "--guest --net 10.213.0.2/30,10.213.0.1".into(),
            vcpus: 1,
            memory_mib: 128,
            shares: vec![crate::Share {
                tag: "share0".into(),
                host: "/srv".into(),
                guest: "/workspace".into(),
                writable: true,
            }],
            nic: Some(crate::Nic {
                stream: None,
                tap: "akv0".into(),
                mac: "02:ac:0a:d5:00:02".into(),
            }),
            serial_ports: 0,
            incoming: None,
            memory: GuestMemory::Anonymous,
            track_dirty_pages: false,
        };
        let layout = Layout {
            dir: "/run/vm".into(),
        };
        let args = arguments(&boot, &layout, false).join(" ");
        assert!(
            args.contains(
                "vhost-user-vsock-device,chardev=vsock -netdev tap,id=net0,ifname=akv0,script=no,downscript=no -device virtio-net-device,netdev=net0,mac=02:ac:0a:d5:00:02 -fsdev local,id=fs0"
            ),
            "{args}"
        );
        // Four devices, four declarations; the agent's arguments after `--`.
        assert!(
            args.contains(
                "reboot=t virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=512@0xfeb00c00:11 virtio_mmio.device=512@0xfeb00a00:10 virtio_mmio.device=512@0xfeb00800:9 -- --guest --net 10.213.0.2/30,10.213.0.1"
            ),
            "{args}"
        );
        assert_eq!(max_shares(true, false), max_shares(false, false) - 1);
        assert_eq!(max_shares(true, true), max_shares(false, false) - 2);

        // An allowlist VM's NIC: the egress helper's socket, never a tap.
        let mut allowlist = boot;
        allowlist.nic = Some(crate::Nic {
            stream: Some("/run/vm/egress.sock".into()),
            tap: String::new(),
            mac: "52:54:00:0a:00:64".into(),
        });
        let args = arguments(&allowlist, &layout, false).join(" ");
        assert!(
            args.contains(
                "-netdev stream,id=net0,server=off,addr.type=unix,addr.path=/run/vm/egress.sock -device virtio-net-device,netdev=net0,mac=52:54:00:0a:00:64"
            ),
            "{args}"
        );
        assert!(!args.contains("tap,"), "{args}");
    }

    #[test]
    fn a_serial_vm_has_its_ports_on_sockets_and_no_vsock() {
        let state = Path::new("/s/it's/memory.state");
        let boot = Boot {
            kernel: Path::new("/k/vmlinux"),
            initramfs: Path::new("/k/init.cpio"),
            base: Path::new("/i/base.ext4"),
            layer: None,
            kernel_args: "console=ttyS0".into(),
            init_args: "--guest --serial 2".into(),
            vcpus: 1,
            memory_mib: 128,
            shares: Vec::new(),
            nic: None,
            serial_ports: 2,
            incoming: Some(state),
            memory: GuestMemory::Anonymous,
            track_dirty_pages: false,
        };
        let layout = Layout {
            dir: "/run/vm".into(),
        };
        let args = arguments(&boot, &layout, false).join(" ");
        assert!(!args.contains("vhost-user-vsock"), "{args}");
        assert!(
            args.contains("-object memory-backend-ram,id=mem,size=128M -nodefaults"),
            "private memory without vhost-user: {args}"
        );
        assert!(
            args.contains(
                "-device virtio-serial-device,max_ports=4 -chardev socket,id=ak.control,path=/run/vm/ak.control.sock,server=on,wait=off -device virtserialport,chardev=ak.control,name=ak.control,nr=1 -chardev socket,id=ak.0,path=/run/vm/ak.0.sock,server=on,wait=off -device virtserialport,chardev=ak.0,name=ak.0,nr=2 -chardev socket,id=ak.1"
            ),
            "{args}"
        );
        assert!(args.ends_with("-incoming defer"), "{args}");
    }

    #[test]
    fn guest_memory_in_a_file_is_mapped_shared_or_copy_on_write() {
        let layout = Layout {
            dir: "/run/vm".into(),
        };
        let template = Path::new("/cache/t,1.memory");
        for (memory, share) in [
            (GuestMemory::WrittenTo(template), "on"),
            (GuestMemory::MappedFrom(template), "off"),
        ] {
            let boot = Boot {
                kernel: Path::new("/k/vmlinux"),
                initramfs: Path::new("/k/init.cpio"),
                base: Path::new("/i/base.ext4"),
                layer: None,
                kernel_args: String::new(),
                init_args: "--guest --serial-once".into(),
                vcpus: 1,
                memory_mib: 256,
                shares: Vec::new(),
                nic: None,
                serial_ports: 1,
                incoming: None,
                memory,
                track_dirty_pages: false,
            };
            let args = arguments(&boot, &layout, false).join(" ");
            assert!(
                args.contains(&format!(
                    "-object memory-backend-file,id=mem,size=256M,mem-path=/cache/t,,1.memory,share={share} "
                )),
                "{args}"
            );
        }
    }
}
