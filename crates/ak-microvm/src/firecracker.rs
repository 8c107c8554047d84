//! The Firecracker driver: starts `firecracker --api-sock`, then configures the VM over
//! its REST API on that Unix socket (boot source, the base drive, machine size, hybrid
//! vsock, the network interface when there is one) and starts it. Firecracker's hybrid
//! vsock speaks the same `CONNECT` handshake as the QEMU driver's vsock daemon, so
//! everything after launch is shared. Snapshots: [`save_snapshot`] writes a paused VM out,
//! [`launch_from_snapshot`] starts a fresh process from one (`firecracker/snapshot.rs`).
//!
//! The API followed is Firecracker 1.16's (`src/firecracker/swagger/firecracker.yaml` at
//! v1.16.1). Unverified on real hardware: these machines have no Firecracker and their KVM
//! runs only paravirtualised guests. The requests are checked against Firecracker's
//! documented API by a stand-in server (`firecracker/stand_in.rs`, used by the tests)
//! and against a recorded contract (`firecracker/contract.json`); nothing more is claimed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ak_core::backend::Lifetime;
use ak_core::watch::SocketWatch;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::UnixStream;

use crate::error::MicrovmError;
use crate::vm::{self, Layout};
use crate::{Boot, Launched};

/// How long Firecracker gets to create its API socket.
const API_START_LIMIT: Duration = Duration::from_secs(10);
/// The guest's vsock context id (any value from 3 on; each VM has its own device).
const GUEST_CID: u32 = 3;
/// Kernel parameters Firecracker's documentation gives: its reset is the i8042's
/// (`reboot=k`), and it has no PCI bus.
pub const CMDLINE: &str = "reboot=k pci=off";

/// One API call.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    /// `PUT` (configuration and actions) or `PATCH` (a started VM's state).
    pub method: hyper::Method,
    pub path: &'static str,
    pub body: Value,
}

impl ApiRequest {
    fn put(path: &'static str, body: Value) -> ApiRequest {
        ApiRequest {
            method: hyper::Method::PUT,
            path,
            body,
        }
    }
}

/// The call that pauses (`true`) or resumes a started VM: its vCPUs stop where they are,
/// its memory and devices stay.
pub fn pause_request(paused: bool) -> ApiRequest {
    ApiRequest {
        method: hyper::Method::PATCH,
        path: "/vm",
        body: json!({ "state": if paused { "Paused" } else { "Resumed" } }),
    }
}

/// The calls that configure and start a VM for `boot`, in the order they are made
/// (every `PUT`; `InstanceStart` last, after everything it needs).
pub fn requests(boot: &Boot, layout: &Layout) -> Vec<ApiRequest> {
    let mut requests = vec![
        ApiRequest::put(
            "/boot-source",
            json!({
                "kernel_image_path": boot.kernel,
                "initrd_path": boot.initramfs,
                "boot_args": boot.cmdline(CMDLINE),
            }),
        ),
        ApiRequest::put(
            "/drives/base",
            json!({
                "drive_id": "base",
                "path_on_host": boot.base,
                "is_root_device": false,
                "is_read_only": true,
            }),
        ),
        ApiRequest::put("/machine-config", machine_config(boot)),
        ApiRequest::put(
            "/vsock",
            json!({
                "guest_cid": GUEST_CID,
                "uds_path": layout.vsock(),
            }),
        ),
    ];
    if let Some(nic) = &boot.nic {
        requests.push(ApiRequest::put(
            "/network-interfaces/eth0",
            json!({
                "iface_id": "eth0",
                "host_dev_name": nic.tap,
                "guest_mac": nic.mac,
            }),
        ));
    }
    requests.push(ApiRequest::put(
        "/actions",
        json!({ "action_type": "InstanceStart" }),
    ));
    requests
}

/// The VM's size, and dirty-page tracking only when asked for (the field left out
/// otherwise, so a VM that will not be diff-snapshotted is configured as before).
fn machine_config(boot: &Boot) -> Value {
    let mut config = json!({
        "vcpu_count": boot.vcpus,
        "mem_size_mib": boot.memory_mib,
    });
    if boot.track_dirty_pages {
        config["track_dirty_pages"] = Value::Bool(true);
    }
    config
}

/// Sends `requests` in order to the API at `socket`; the first refusal ends it.
pub async fn configure(socket: &Path, requests: &[ApiRequest]) -> Result<(), MicrovmError> {
    let mut client = Client::connect(socket).await?;
    for request in requests {
        client.send(request).await?;
    }
    Ok(())
}

/// One connection to Firecracker's API, its calls made one after another.
struct Client {
    socket: PathBuf,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// Drives the connection; ended with the client.
    driver: tokio::task::JoinHandle<hyper::Result<()>>,
}

impl Client {
    async fn connect(socket: &Path) -> Result<Client, MicrovmError> {
        let unreachable = |reason: String| MicrovmError::FirecrackerUnreachable {
            socket: socket.to_path_buf(),
            reason,
        };
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Client {
            socket: socket.to_path_buf(),
            sender,
            driver: tokio::spawn(connection),
        })
    }

    /// Makes one call; a refusal is an error with Firecracker's explanation, an answer the
    /// body it came with (empty for the `204 No Content` of a configuration call).
    async fn send(&mut self, request: &ApiRequest) -> Result<Bytes, MicrovmError> {
        let unreachable = |reason: String| MicrovmError::FirecrackerUnreachable {
            socket: self.socket.clone(),
            reason,
        };
        // A read (`GET`) carries no body rather than a JSON `null`.
        let body = if request.body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(request.body.to_string())
        };
        let http_request = hyper::Request::builder()
            .method(request.method.clone())
            .uri(request.path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(body))
            .map_err(|e| unreachable(e.to_string()))?;
        let response = self
            .sender
            .send_request(http_request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if !status.is_success() {
            // Firecracker explains a refusal as {"fault_message": "..."}.
            let text = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("fault_message")
                        .and_then(Value::as_str)
                        .map(String::from)
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(MicrovmError::FirecrackerApi {
                request: format!("{} {}", request.method, request.path),
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(body)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Starts Firecracker (the jailer is not used: see the README) and configures the VM.
pub async fn launch(
    program: &Path,
    boot: &Boot<'_>,
    layout: &Layout,
    lifetime: Lifetime,
) -> Result<Launched, MicrovmError> {
    if boot.layer.is_some() {
        return Err(MicrovmError::Unsupported(
            "a named sandbox's layer disk needs the qemu driver".into(),
        ));
    }
    if !boot.shares.is_empty() {
        return Err(MicrovmError::Unsupported(
            "Firecracker has no shared file system device: host directories (a named sandbox's workdir, --mount-cwd, --dir) need the qemu driver".into(),
        ));
    }
    let requests = requests(boot, layout);
    start(
        program,
        layout,
        lifetime,
        "instance configuration and start",
        &requests,
    )
    .await
}

/// Starts a Firecracker process with nothing configured, waits for its API socket, then
/// makes `requests` (timed as the phase `phase`). A process that exits first, or calls
/// that are refused, end it.
async fn start(
    program: &Path,
    layout: &Layout,
    lifetime: Lifetime,
    phase: &'static str,
    requests: &[ApiRequest],
) -> Result<Launched, MicrovmError> {
    let watch = SocketWatch::new(&layout.dir)
        .map_err(MicrovmError::io(format!("watch {}", layout.dir.display())))?;
    let api = layout.api_socket();
    let args = vec!["--api-sock".to_string(), api.display().to_string()];
    let started = std::time::Instant::now();
    let (mut hypervisor, hypervisor_id) = vm::spawn(program, &args, &layout.host_log(), lifetime)?;
    let mut phases = Vec::new();
    let configured = async {
        tokio::select! {
            ready = watch.wait_for(&api, API_START_LIMIT) => ready
                .map_err(|e| MicrovmError::FirecrackerUnreachable { socket: api.clone(), reason: e.to_string() })?,
            status = hypervisor.wait() => return Err(MicrovmError::Boot {
                reason: format!("firecracker exited ({}) before its API was up",
                    status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())),
                log: layout.last_output(),
            }),
        }
        phases.push(("hypervisor process start", started.elapsed()));
        let configuring = std::time::Instant::now();
        let configured = configure(&api, requests).await;
        phases.push((phase, configuring.elapsed()));
        configured
    }
    .await;
    match configured {
        Ok(()) => Ok(Launched {
            hypervisor,
            hypervisor_id,
            helper: None,
            phases,
        }),
        Err(e) => {
            let _ = hypervisor.start_kill();
            Err(e)
        }
    }
}

mod snapshot;
pub use snapshot::{
    AfterSnapshot, SnapshotKind, SnapshotPaths, create_request, launch_from_snapshot, load_request,
    save_snapshot,
};

#[cfg(test)]
mod stand_in;
#[cfg(test)]
mod tests;
