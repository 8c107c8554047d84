//! The driver's configuration and pause calls against the stand-in API
//! ([`super::stand_in`]), and against the recorded contract.

use std::path::Path;

use serde_json::Value;

use super::stand_in::{boot, serve};
use super::*;

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
    let contract = &contract["boot with a network device, pause, resume"];
    let calls = Value::Array(api.lock().unwrap().calls.clone());
    assert_eq!(
        &calls, contract,
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
