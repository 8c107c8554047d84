//! A stand-in for Firecracker's API (1.16) that enforces what its documentation (the
//! OpenAPI description `firecracker.yaml`, and `docs/snapshotting/snapshot-support.md`)
//! says about the calls the driver makes: required fields, no unknown fields, value
//! ranges, that the VM is configured before `InstanceStart` and not after, that a
//! snapshot is taken of a started, paused VM and loaded only into a fresh process. It
//! writes a snapshot's files as Firecracker does (created, or truncated, at the paths
//! given). The driver's tests run against it and check its record of the calls against
//! the recorded contract in `contract.json`.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{patch, put};
use serde_json::{Value, json};

use super::*;

#[derive(Debug, Default)]
pub(super) struct Api {
    /// Every call that changed something, in order.
    pub(super) calls: Vec<Value>,
    /// Anything configured: a snapshot can no longer be loaded.
    configured: bool,
    boot_source: bool,
    /// A VM exists (`InstanceStart`, or a snapshot loaded).
    pub(super) started: bool,
    pub(super) paused: bool,
    /// The last `/machine-config` body, as `GET /machine-config` reports it.
    machine_config: Option<Value>,
    track_dirty_pages: bool,
    /// The test's knob: a snapshot's memory cannot be written (its state file is).
    pub(super) disk_full: bool,
}

type Shared = State<Arc<Mutex<Api>>>;
type Reply = (StatusCode, Json<Value>);

fn fault(message: &str) -> Reply {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "fault_message": message })),
    )
}

fn no_content() -> Reply {
    (StatusCode::NO_CONTENT, Json(Value::Null))
}

/// Checks `body` has exactly the `required` fields plus any of `optional`.
fn fields(body: &Value, required: &[&str], optional: &[&str]) -> Result<(), Reply> {
    let object = body
        .as_object()
        .ok_or_else(|| fault("the body must be a JSON object"))?;
    if let Some(missing) = required.iter().find(|f| !object.contains_key(**f)) {
        return Err(fault(&format!("missing field `{missing}`")));
    }
    if let Some(unknown) = object
        .keys()
        .find(|k| !required.contains(&k.as_str()) && !optional.contains(&k.as_str()))
    {
        return Err(fault(&format!("unknown field `{unknown}`")));
    }
    Ok(())
}

fn record(api: &mut Api, path: String, body: Value) -> Result<(), Reply> {
    if api.started {
        return Err(fault(
            "The requested operation is not supported after starting the microVM.",
        ));
    }
    api.calls
        .push(json!({ "method": "PUT", "path": path, "body": body }));
    api.configured = true;
    Ok(())
}

fn not_started() -> Reply {
    fault("The requested operation is not supported before starting the microVM.")
}

async fn boot_source(State(api): Shared, Json(body): Json<Value>) -> Reply {
    let checked =
        fields(&body, &["kernel_image_path"], &["boot_args", "initrd_path"]).and_then(|()| {
            for field in ["kernel_image_path", "boot_args", "initrd_path"] {
                if body.get(field).is_some_and(|v| !v.is_string()) {
                    return Err(fault(&format!("`{field}` must be a string")));
                }
            }
            let mut api = api.lock().unwrap();
            record(&mut api, "/boot-source".into(), body.clone())?;
            api.boot_source = true;
            Ok(())
        });
    checked.map_or_else(|e| e, |()| no_content())
}

async fn drive(State(api): Shared, UrlPath(id): UrlPath<String>, Json(body): Json<Value>) -> Reply {
    let checked = fields(
        &body,
        &["drive_id", "is_root_device"],
        &[
            "path_on_host",
            "is_read_only",
            "partuuid",
            "cache_type",
            "rate_limiter",
            "io_engine",
            "socket",
        ],
    )
    .and_then(|()| {
        if body["drive_id"] != json!(id) {
            return Err(fault("drive_id in the path and the body differ"));
        }
        if !body["is_root_device"].is_boolean()
            || body.get("is_read_only").is_some_and(|v| !v.is_boolean())
        {
            return Err(fault("is_root_device and is_read_only are booleans"));
        }
        if !body.get("path_on_host").is_some_and(Value::is_string) {
            return Err(fault("a block drive needs path_on_host"));
        }
        record(
            &mut api.lock().unwrap(),
            format!("/drives/{id}"),
            body.clone(),
        )
    });
    checked.map_or_else(|e| e, |()| no_content())
}

async fn machine_config(State(api): Shared, Json(body): Json<Value>) -> Reply {
    let checked = fields(
        &body,
        &["vcpu_count", "mem_size_mib"],
        &["smt", "cpu_template", "track_dirty_pages", "huge_pages"],
    )
    .and_then(|()| {
        let vcpus = body["vcpu_count"].as_u64().unwrap_or(0);
        if !(1..=32).contains(&vcpus) {
            return Err(fault("vcpu_count must be from 1 to 32"));
        }
        if body["mem_size_mib"].as_u64().is_none_or(|m| m == 0) {
            return Err(fault("mem_size_mib must be a positive integer"));
        }
        if body
            .get("track_dirty_pages")
            .is_some_and(|v| !v.is_boolean())
        {
            return Err(fault("track_dirty_pages must be a boolean"));
        }
        let mut api = api.lock().unwrap();
        record(&mut api, "/machine-config".into(), body.clone())?;
        api.track_dirty_pages = body["track_dirty_pages"].as_bool().unwrap_or(false);
        api.machine_config = Some(body.clone());
        Ok(())
    });
    checked.map_or_else(|e| e, |()| no_content())
}

/// `GET /machine-config`: the configuration with its defaults filled in.
async fn get_machine_config(State(api): Shared) -> Reply {
    let api = api.lock().unwrap();
    let mut config =
        json!({ "vcpu_count": 1, "mem_size_mib": 128, "smt": false, "huge_pages": "None" });
    if let Some(Value::Object(set)) = &api.machine_config {
        for (key, value) in set {
            config[key] = value.clone();
        }
    }
    config["track_dirty_pages"] = Value::Bool(api.track_dirty_pages);
    (StatusCode::OK, Json(config))
}

async fn vsock(State(api): Shared, Json(body): Json<Value>) -> Reply {
    let checked = fields(&body, &["guest_cid", "uds_path"], &["vsock_id"]).and_then(|()| {
        if body["guest_cid"].as_u64().is_none_or(|cid| cid < 3) {
            return Err(fault("guest_cid must be 3 or more"));
        }
        if !body["uds_path"].is_string() {
            return Err(fault("uds_path must be a string"));
        }
        record(&mut api.lock().unwrap(), "/vsock".into(), body.clone())
    });
    checked.map_or_else(|e| e, |()| no_content())
}

async fn network_interface(
    State(api): Shared,
    UrlPath(id): UrlPath<String>,
    Json(body): Json<Value>,
) -> Reply {
    let checked = fields(
        &body,
        &["iface_id", "host_dev_name"],
        &["guest_mac", "rx_rate_limiter", "tx_rate_limiter"],
    )
    .and_then(|()| {
        if body["iface_id"] != json!(id) {
            return Err(fault("iface_id in the path and the body differ"));
        }
        if !body["host_dev_name"].is_string() {
            return Err(fault("host_dev_name must be a string"));
        }
        // A MAC is six two-digit hex bytes separated by colons.
        let mac_ok = body.get("guest_mac").is_none_or(|mac| {
            mac.as_str().is_some_and(|mac| {
                let bytes: Vec<&str> = mac.split(':').collect();
                bytes.len() == 6
                    && bytes
                        .iter()
                        .all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok())
            })
        });
        if !mac_ok {
            return Err(fault("guest_mac must be a MAC address"));
        }
        record(
            &mut api.lock().unwrap(),
            format!("/network-interfaces/{id}"),
            body.clone(),
        )
    });
    checked.map_or_else(|e| e, |()| no_content())
}

async fn actions(State(api): Shared, Json(body): Json<Value>) -> Reply {
    let checked = fields(&body, &["action_type"], &[]).and_then(|()| {
        let mut api = api.lock().unwrap();
        match body["action_type"].as_str() {
            Some("InstanceStart") => {
                if !api.boot_source {
                    return Err(fault("Cannot start microvm without kernel configuration."));
                }
                record(&mut api, "/actions".into(), body.clone())?;
                api.started = true;
                api.paused = false;
                Ok(())
            }
            Some("FlushMetrics" | "SendCtrlAltDel") => {
                record(&mut api, "/actions".into(), body.clone())
            }
            _ => Err(fault("unknown action_type")),
        }
    });
    checked.map_or_else(|e| e, |()| no_content())
}

/// `PATCH /vm`: a started VM's state, `Paused` or `Resumed` (refused before the start).
async fn vm_state(State(api): Shared, Json(body): Json<Value>) -> Reply {
    let checked = fields(&body, &["state"], &[]).and_then(|()| {
        let mut api = api.lock().unwrap();
        if !api.started {
            return Err(not_started());
        }
        match body["state"].as_str() {
            Some(state @ ("Paused" | "Resumed")) => {
                api.paused = state == "Paused";
                api.calls
                    .push(json!({ "method": "PATCH", "path": "/vm", "body": body }));
                Ok(())
            }
            _ => Err(fault("state must be Paused or Resumed")),
        }
    });
    checked.map_or_else(|e| e, |()| no_content())
}

/// `PUT /snapshot/create`: a started VM, paused, written to its two files. A diff needs
/// no dirty-page tracking since Firecracker 1.13 (without it, `mincore(2)` picks the
/// pages), so none is asked for here: the driver's own refusal is what is tested.
async fn snapshot_create(State(api): Shared, Json(body): Json<Value>) -> Reply {
    let checked = fields(
        &body,
        &["snapshot_path", "mem_file_path"],
        &["snapshot_type"],
    )
    .and_then(|()| {
        let mut api = api.lock().unwrap();
        if !api.started {
            return Err(not_started());
        }
        if !api.paused {
            return Err(fault("The microVM must be paused to create a snapshot."));
        }
        let (Some(state), Some(memory)) = (
            body["snapshot_path"].as_str(),
            body["mem_file_path"].as_str(),
        ) else {
            return Err(fault("snapshot_path and mem_file_path are strings"));
        };
        let kind = match body.get("snapshot_type").map(Value::as_str) {
            None | Some(Some("Full")) => "Full",
            Some(Some("Diff")) => "Diff",
            _ => return Err(fault("snapshot_type must be Full or Diff")),
        };
        // As Firecracker: the state file first, then the memory.
        std::fs::write(state, format!("{kind} state"))
            .map_err(|e| fault(&format!("Cannot save the microVM state: {e}")))?;
        if api.disk_full {
            let _ = std::fs::write(memory, "half");
            return Err(fault(
                "Cannot save the memory: No space left on device (os error 28)",
            ));
        }
        std::fs::write(memory, format!("{kind} memory"))
            .map_err(|e| fault(&format!("Cannot save the memory: {e}")))?;
        api.calls
            .push(json!({ "method": "PUT", "path": "/snapshot/create", "body": body }));
        Ok(())
    });
    checked.map_or_else(|e| e, |()| no_content())
}

/// `PUT /snapshot/load`: only into a fresh process; exactly one of `mem_backend` and the
/// deprecated `mem_file_path`; the files must exist.
async fn snapshot_load(State(api): Shared, Json(body): Json<Value>) -> Reply {
    let checked = fields(
        &body,
        &["snapshot_path"],
        &[
            "mem_file_path",
            "mem_backend",
            "enable_diff_snapshots",
            "track_dirty_pages",
            "resume_vm",
            "network_overrides",
            "vsock_override",
            "clock_realtime",
        ],
    )
    .and_then(|()| {
        let mut api = api.lock().unwrap();
        if api.configured || api.started {
            return Err(fault(
                "Loading a microVM snapshot not allowed after configuring boot-specific resources.",
            ));
        }
        let memory = match (body.get("mem_backend"), body.get("mem_file_path")) {
            (Some(backend), None) => {
                fields(backend, &["backend_type", "backend_path"], &[])?;
                if !matches!(backend["backend_type"].as_str(), Some("File" | "Uffd")) {
                    return Err(fault("backend_type must be File or Uffd"));
                }
                backend["backend_path"].as_str()
            }
            (None, Some(path)) => path.as_str(),
            _ => {
                return Err(fault(
                    "exactly one of mem_backend and mem_file_path is required",
                ));
            }
        };
        let flags = [
            "enable_diff_snapshots",
            "track_dirty_pages",
            "resume_vm",
            "clock_realtime",
        ];
        if flags
            .iter()
            .any(|f| body.get(*f).is_some_and(|v| !v.is_boolean()))
        {
            return Err(fault(&format!("{} are booleans", flags.join(", "))));
        }
        if let Some(vsock) = body.get("vsock_override") {
            fields(vsock, &["uds_path"], &[])?;
        }
        let exists = |path: Option<&str>| path.is_some_and(|p| Path::new(p).is_file());
        if !exists(body["snapshot_path"].as_str()) || !exists(memory) {
            return Err(fault(
                "Cannot open the snapshot's files: No such file or directory",
            ));
        }
        api.calls
            .push(json!({ "method": "PUT", "path": "/snapshot/load", "body": body }));
        api.started = true;
        api.paused = !body["resume_vm"].as_bool().unwrap_or(false);
        api.track_dirty_pages = body["track_dirty_pages"].as_bool().unwrap_or(false)
            || body["enable_diff_snapshots"].as_bool().unwrap_or(false);
        Ok(())
    });
    checked.map_or_else(|e| e, |()| no_content())
}

/// Serves the stand-in API at `socket`.
pub(super) async fn serve_at(socket: &Path) -> Arc<Mutex<Api>> {
    let api = Arc::new(Mutex::new(Api::default()));
    let router = axum::Router::new()
        .route("/boot-source", put(boot_source))
        .route("/drives/{id}", put(drive))
        .route(
            "/machine-config",
            put(machine_config).get(get_machine_config),
        )
        .route("/vsock", put(vsock))
        .route("/network-interfaces/{id}", put(network_interface))
        .route("/actions", put(actions))
        .route("/vm", patch(vm_state))
        .route("/snapshot/create", put(snapshot_create))
        .route("/snapshot/load", put(snapshot_load))
        .with_state(api.clone());
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    api
}

/// Serves the stand-in API in `dir`.
pub(super) async fn serve(dir: &Path) -> (PathBuf, Arc<Mutex<Api>>) {
    let socket = dir.join("firecracker.sock");
    let api = serve_at(&socket).await;
    (socket, api)
}

pub(super) fn boot<'a>(kernel: &'a Path, initramfs: &'a Path, base: &'a Path) -> Boot<'a> {
    Boot {
        kernel,
        initramfs,
        base,
        layer: None,
        kernel_args: "console=ttyS0".into(),
        init_args: "--guest --vsock 1024".into(),
        vcpus: 2,
        memory_mib: 512,
        shares: Vec::new(),
        nic: None,
        serial_ports: 0,
        incoming: None,
        memory: crate::GuestMemory::Anonymous,
        track_dirty_pages: false,
    }
}
