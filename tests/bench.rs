//! `pulse-ledger bench` runs end to end (small sizes) and prints every
//! figure, with the ratios the targets are stated in.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

use std::process::Command;

#[test]
fn the_bench_measures_every_figure_against_its_ceiling() {
    let out = Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args([
            "bench",
            "--jobs",
            "500",
            "--registrations",
            "100",
            "--latency-secs",
            "1",
            "--runs",
            "1",
            "--plugin-bin",
            env!("CARGO_BIN_EXE_pulse-test-plugin"),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let values = v["values"].as_object().unwrap();
    for key in [
        "verify_per_core",
        "fsync",
        "bare_grpc",
        "register_1",
        "register_16",
        "register_64",
        "jobs",
        "start_p50",
        "start_p99",
        "start_p999",
        "resolve_cached",
        "resolve_cold",
    ] {
        let x = values[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing"));
        assert!(x.is_finite() && x > 0.0, "{key} = {x}");
    }
    let ratio = |key: &str| {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == key)
            .map(|r| (r["ratio_to"].clone(), r["ratio"].as_f64().unwrap()))
            .unwrap()
    };
    let (to, r) = ratio("jobs");
    assert_eq!(to, "bare_grpc");
    let expect = values["jobs"].as_f64().unwrap() / values["bare_grpc"].as_f64().unwrap();
    assert!((r - expect).abs() < 1e-9);
    assert_eq!(ratio("register_64").0, "verify_per_core");
    assert!(values["start_p50"].as_f64() <= values["start_p99"].as_f64());
    assert_eq!(v["run"]["runs"], 1);
}
