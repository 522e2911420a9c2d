//! The benchmark in smoke mode (tiny sizes), so every measurement keeps running: a figure that
//! cannot be produced fails CI. The numbers themselves are not checked here.

#[test]
fn every_measurement_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("bench");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_punchgate-bench"))
        .args(["--smoke", "--out"])
        .arg(&out)
        .arg("--work")
        .arg(dir.path().join("work"))
        .status()
        .expect("run the benchmark");
    assert!(status.success());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).expect("json"))
            .expect("valid json");
    let paths = json["paths"].as_array().expect("paths");
    assert_eq!(
        paths.len(),
        4,
        "raw TCP, plain forwarder, tunnel over TCP, tunnel over QUIC"
    );
    for path in paths {
        for key in [
            "throughput_gbps",
            "parallel_gbps",
            "rtt_p50_us",
            "rtt_p99_us",
            "setup_p50_us",
            "setup_p99_us",
        ] {
            let v = path[key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{} {key} = {v}", path["name"]);
        }
    }
    for forwarding in &paths[1..] {
        for key in ["rss_per_connection_kib", "cpu_ms_per_gib"] {
            assert!(!forwarding[key].is_null(), "{} {key}", forwarding["name"]);
        }
    }
    for side in ["grpc_tcp", "grpc_tls", "grpc_punchgate"] {
        for key in ["unary_p50_us", "unary_p99_us", "stream_gbps"] {
            let v = json[side][key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{side} {key} = {v}");
        }
    }
    let markdown = std::fs::read_to_string(out.with_extension("md")).expect("markdown");
    assert!(markdown.contains("| target | measured | met |"));
}
