//! `agentkernel bench`: the component breakdown and throughput, as JSON.

use crate::common::{ak, assert_code, modes, shared_host, stderr};

#[test]
fn bench_reports_every_component_of_the_native_backend() {
    let _host = shared_host();
    for mode in modes() {
        let output = ak(
            mode,
            &[
                "bench",
                "--no-network",
                "--iterations",
                "3",
                "--runs",
                "6",
                "--json",
            ],
        );
        assert_code(&output, 0);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["iterations"], 3);
        assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
        let native = &report["backends"][0];
        assert_eq!(native["backend"], "native", "{mode:?}");
        for component in ["boot", "ready", "exec", "shutdown", "total"] {
            let stats = &native["components"][component];
            assert_eq!(stats["count"], 3, "{mode:?} {component}");
            let (p50, max) = (
                stats["p50_ms"].as_f64().unwrap(),
                stats["max_ms"].as_f64().unwrap(),
            );
            assert!(p50 > 0.0 && p50 <= max, "{mode:?} {component}: {stats}");
        }
        assert_eq!(native["throughput"]["runs"], 6);
        assert!(native["throughput"]["sandboxes_per_s"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn bench_refuses_bad_settings() {
    let _host = shared_host();
    for mode in modes() {
        for args in [
            &["bench", "--iterations", "0"][..],
            &["bench", "--backend", "nope"],
            &["bench", "--concurrency", "x"],
        ] {
            let output = ak(mode, args);
            assert_code(&output, 2);
            assert!(!stderr(&output).is_empty());
        }
    }
}
