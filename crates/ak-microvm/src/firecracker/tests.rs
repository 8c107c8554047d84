//! The driver against a stand-in for Firecracker's API that enforces what its
//! documentation (the OpenAPI description `firecracker.yaml`) says about the calls we
//! make: required fields, no unknown fields, value ranges, and that the VM is configured
//! before `InstanceStart` and not after. The calls are also checked against the recorded
//! contract in `contract.json`.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{patch, put};
use serde_json::{Value, json};

use super::*;

#[derive(Debug, Default)]
struct Api {
    calls: Vec<Value>,
    started: bool,
    boot_source: bool,
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
    Ok(())
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
        record(
            &mut api.lock().unwrap(),
            "/machine-config".into(),
            body.clone(),
        )
    });
    checked.map_or_else(|e| e, |()| no_content())
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
            return Err(fault(
                "The requested operation is not supported before starting the microVM.",
            ));
        }
        match body["state"].as_str() {
            Some("Paused" | "Resumed") => {
                api.calls
                    .push(json!({ "method": "PATCH", "path": "/vm", "body": body }));
                Ok(())
            }
            _ => Err(fault("state must be Paused or Resumed")),
        }
    });
    checked.map_or_else(|e| e, |()| no_content())
}

async fn serve(dir: &std::path::Path) -> (std::path::PathBuf, Arc<Mutex<Api>>) {
    let api = Arc::new(Mutex::new(Api::default()));
    let router = axum::Router::new()
        .route("/boot-source", put(boot_source))
        .route("/drives/{id}", put(drive))
        .route("/machine-config", put(machine_config))
        .route("/vsock", put(vsock))
        .route("/network-interfaces/{id}", put(network_interface))
        .route("/actions", put(actions))
        .route("/vm", patch(vm_state))
        .with_state(api.clone());
    let socket = dir.join("firecracker.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (socket, api)
}

fn boot<'a>(kernel: &'a Path, initramfs: &'a Path, base: &'a Path) -> Boot<'a> {
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
    }
}

#[tokio::test]
async fn the_vm_is_configured_as_recorded_and_started_last() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, api) = serve(dir.path()).await;
    let (kernel, initramfs, base) = (
        Path::new("/cache/vmlinux"),
        Path::new("/cache/agent.cpio"),
        Path::new("/cache/base.ext4"),
    );
    let layout = Layout {
        dir: "/run/vm".into(),
    };
    // With a network device: the contract holds every call the driver can make.
    let mut with_nic = boot(kernel, initramfs, base);
    with_nic.nic = Some(crate::Nic {
        stream: None,
        tap: "akv0".into(),
        mac: "02:ac:0a:d5:00:02".into(),
    });
    let early = configure(&socket, &[pause_request(true)]).await;
    assert!(
        early.unwrap_err().to_string().contains("PATCH /vm"),
        "a VM not started yet cannot be paused"
    );
    configure(&socket, &requests(&with_nic, &layout))
        .await
        .unwrap();
    // Then paused and resumed, as `agentkernel pause|resume` does.
    configure(&socket, &[pause_request(true)]).await.unwrap();
    configure(&socket, &[pause_request(false)]).await.unwrap();
    let contract: Value = serde_json::from_str(include_str!("contract.json")).unwrap();
    let calls = Value::Array(api.lock().unwrap().calls.clone());
    assert_eq!(
        calls, contract,
        "the calls differ from the recorded contract"
    );
    assert!(api.lock().unwrap().started);
}

#[tokio::test]
async fn a_refusal_is_reported_with_firecrackers_message() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, _api) = serve(dir.path()).await;
    let (kernel, initramfs, base) = (Path::new("/k"), Path::new("/i"), Path::new("/b"));
    let layout = Layout {
        dir: "/run/vm".into(),
    };
    let mut bad = boot(kernel, initramfs, base);
    bad.vcpus = 0;
    let error = configure(&socket, &requests(&bad, &layout))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("PUT /machine-config"), "{error}");
    assert!(error.contains("vcpu_count must be from 1 to 32"), "{error}");
    // Starting twice: the second round is refused after the start.
    let good = boot(kernel, initramfs, base);
    configure(&socket, &requests(&good, &layout)).await.unwrap();
    let error = configure(&socket, &requests(&good, &layout))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("after starting the microVM"), "{error}");
}

#[tokio::test]
async fn a_bad_network_interface_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, _api) = serve(dir.path()).await;
    let (kernel, initramfs, base) = (Path::new("/k"), Path::new("/i"), Path::new("/b"));
    let layout = Layout {
        dir: "/run/vm".into(),
    };
    let mut bad = boot(kernel, initramfs, base);
    bad.nic = Some(crate::Nic {
        stream: None,
        tap: "akv0".into(),
        mac: "not-a-mac".into(),
    });
    let error = configure(&socket, &requests(&bad, &layout))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("PUT /network-interfaces/eth0"), "{error}");
    assert!(error.contains("guest_mac must be a MAC address"), "{error}");
}

#[tokio::test]
async fn a_missing_api_socket_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let error = configure(&dir.path().join("none.sock"), &[])
        .await
        .unwrap_err();
    assert!(
        matches!(error, MicrovmError::FirecrackerUnreachable { .. }),
        "{error}"
    );
}
