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
        5,
        "raw TCP, plain forwarder, TLS forwarder, tunnel over TCP, tunnel over QUIC"
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
    assert!(markdown.contains("The TLS forwarder"), "{markdown}");
}

/// `bulk`, the quick comparison of two builds: one small round through the forwarders of every
/// layer (`--layers`) and against a second "build" (this one again); every cell of its table
/// is a number and every throughput is positive. Each transfer's byte count is checked by the
/// sink's answer and 20 echoed round trips through every path byte for byte, so a forwarder
/// that loses, invents or garbles bytes in either direction fails here.
#[test]
fn a_bulk_comparison_runs() {
    let bin = env!("CARGO_BIN_EXE_punchgate-bench");
    let table = run_table(&[
        "bulk",
        "--rounds",
        "1",
        "--mib",
        "4",
        "--layers",
        "--against",
        bin,
    ]);
    assert!(
        table.contains("TLS forwarder") && table.contains("TLS + yamux forwarder"),
        "{table}"
    );
    for (row, values) in numeric_rows(&table, &["1", "median"], 2 + 4 * 3) {
        // Throughputs; CPU figures may be 0 at this size (the clock ticks every 10 ms).
        for i in [0, 2, 5, 8, 11] {
            assert!(values[i].is_finite() && values[i] > 0.0, "{row}");
        }
    }
}

/// `grpc`, streaming and unary calls over plain TCP, TLS and Punchgate in turn: two small
/// rounds and the medians, every cell a number, every throughput and latency positive.
#[test]
fn a_grpc_comparison_runs() {
    let table = run_table(&["grpc", "--rounds", "2", "--mib", "4", "--unary", "20"]);
    for (row, values) in numeric_rows(&table, &["1", "2", "median"], 2 + 2 * 4 + 5) {
        // Throughputs and unary p50s with their ratios; CPU figures (and their ratios) may be
        // 0, NaN or inf at this size.
        for i in [0, 2, 6, 10, 11, 12, 13, 14] {
            assert!(values[i].is_finite() && values[i] > 0.0, "{row}");
        }
    }
}

/// Runs the benchmark with `args` in a fresh work directory; its standard output (a table).
fn run_table(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_punchgate-bench"))
        .arg("--work")
        .arg(dir.path())
        .args(args)
        .output()
        .expect("run the benchmark");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// The rows of a Markdown `table` whose first cell is one of `labels` (each must be there,
/// once), with their other cells, `cells` of them, parsed as numbers.
fn numeric_rows<'t>(table: &'t str, labels: &[&str], cells: usize) -> Vec<(&'t str, Vec<f64>)> {
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| {
            labels
                .iter()
                .any(|label| l.starts_with(&format!("| {label} |")))
        })
        .collect();
    assert_eq!(rows.len(), labels.len(), "{table}");
    rows.into_iter()
        .map(|row| {
            let values: Vec<f64> = row
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .skip(1)
                .map(|c| {
                    c.parse()
                        .unwrap_or_else(|_| panic!("not a number: {c} in {row}"))
                })
                .collect();
            assert_eq!(values.len(), cells, "{row}");
            (row, values)
        })
        .collect()
}

/// `handshakes`, connection setup per security path (node to node over TCP and QUIC, a node to
/// and from stock rust-libp2p peers): two dials per case, every case in the table with numbers.
#[test]
fn the_handshake_table_runs() {
    let table = run_table(&["handshakes", "--rounds", "2"]);
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| node") || l.starts_with("| stock"))
        .collect();
    assert_eq!(rows.len(), 7, "{table}");
    for row in rows {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        for cell in &cells[1..3] {
            let ms: f64 = cell
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {cell} in {row}"));
            assert!(ms > 0.0, "{row}");
        }
    }
}

/// `flood`: one attacker identity against a node. B keeps at most its per-peer connection limit
/// of the attacker's 200 connections, and the honest peer's tunnel answers in every phase.
#[test]
fn the_flood_table_runs() {
    let table = run_table(&["flood"]);
    let kept: usize = table
        .split("connections dialled (")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of kept connections: {table}"));
    assert!(
        kept <= 8,
        "B kept more than 8 of one peer's connections: {table}"
    );
    for phase in ["before", "during", "after"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| {phase} |")))
            .unwrap_or_else(|| panic!("no {phase} row: {table}"));
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 6, "{row}");
        let gbits: f64 = cells[4].parse().unwrap_or_else(|_| panic!("{row}"));
        assert!(gbits > 0.0, "{row}");
    }
}

/// `udp`: raw UDP and UDP tunnels over TCP and over QUIC, a fifth of a second per offered rate:
/// every row of every table is there, every cell holds a number, and every path delivered at
/// the lowest rate of the sweep and answered the latency pings.
#[test]
fn the_udp_table_runs() {
    let table = run_table(&["udp", "--seconds", "0.2", "--pings", "20"]);
    let first_number = |cell: &str| -> f64 {
        cell.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a number: {cell} in {table}"))
    };
    let row = |label: &str| -> Vec<f64> {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("| {label}")))
            .unwrap_or_else(|| panic!("no row {label}: {table}"));
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 4, "{line}");
        cells[1..].iter().map(|c| first_number(c)).collect()
    };
    for delivered in row("10000 |") {
        assert!(delivered > 0.0, "{table}");
    }
    for label in [
        "25000",
        "50000",
        "100000",
        "200000",
        "max",
        "as fast as it goes",
    ] {
        row(label);
    }
    for path in ["raw UDP", "tunnel over TCP", "tunnel over QUIC"] {
        let p50 = row(path)[0];
        assert!(p50 > 0.0, "{table}");
    }
    for mbits in row("10000 /s") {
        assert!(mbits > 0.0, "{table}");
    }
}
