//! Runs the real `punchgate-logs` binary on logs of real lab runs (`tests/fixtures/`): each
//! subcommand's text, JSON and CSV, stdin, folders, bad lines, and a missing path.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_punchgate-logs"))
        .args(args)
        .output()
        .expect("run punchgate-logs")
}

fn run_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_punchgate-logs"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run punchgate-logs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

fn json(args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&ok(&run(&args))).expect("valid JSON")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The source whose file name is `name` in a JSON document.
fn source<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .find(|s| s["source"].as_str().is_some_and(|p| p.ends_with(name)))
        .unwrap_or_else(|| panic!("no source {name} in {doc}"))
}

#[test]
fn summary_text_shows_one_page_per_node_of_a_folder() {
    let text = ok(&run(&["summary", path(&fixtures().join("trusting"))]));
    assert_eq!(text.matches("== ").count(), 3, "{text}");
    for expected in [
        "peer-a.log ==",
        "Phase progression:",
        "Initializing -> Discovering (ConnectionEstablished)",
        "NAT status: Private",
        "Relay reservations: accepted by relay (…",
        "Tunnels out (client): 2 opened (0 direct, 2 relayed), 2 closed",
        "Tunnels in (server): 2 opened (0 direct, 2 relayed), 2 closed",
        "20.0 MiB to the service",
        "1× hole punch failed, tunnels to this peer use the relay",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn summary_json_and_csv_agree_on_the_counts() {
    let dir = fixtures().join("trusting");
    let doc = json(&["summary", path(&dir)]);
    assert_eq!(doc["report"], "summary");
    let b = source(&doc, "peer-b.log");
    assert_eq!(b["punches_failed"], 1);
    assert_eq!(b["tunnels_server"]["opened"], 2);
    assert_eq!(b["tunnels_server"]["bytes_to_service"], 10 << 21);
    assert_eq!(b["skipped_lines"], 0);
    assert!(
        b["peer_id"]
            .as_str()
            .is_some_and(|p| p.starts_with("12D3KooW"))
    );
    // The peers whose logs were read, by file name.
    let labels: Vec<&str> = doc["peers"]
        .as_object()
        .expect("peers")
        .values()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(labels.len(), 3);
    assert!(labels.contains(&"relay"));

    let csv = ok(&run(&["summary", "--csv", path(&dir)]));
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    assert_eq!(header[0], "source");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3);
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let b_row = rows
        .iter()
        .find(|r| r[0].ends_with("peer-b.log"))
        .expect("B's row");
    assert!(rows.iter().all(|r| r.len() == header.len()));
    assert_eq!(b_row[col("server_tunnels")], "2");
    assert_eq!(b_row[col("punches_failed")], "1");
    assert_eq!(b_row[col("peer_id")], b["peer_id"].as_str().expect("id"));
}

#[test]
fn connections_name_peers_and_count_paths() {
    let dir = fixtures().join("trusting");
    let text = ok(&run(&["connections", path(&dir)]));
    assert!(text.contains("peer-b (…"), "{text}");
    assert!(text.contains("0ok/1x"), "B's failed punch: {text}");

    let doc = json(&["connections", path(&dir)]);
    let a = source(&doc, "peer-a.log");
    let peers = a["peers"].as_array().expect("peers");
    let b_id = source(&doc, "peer-b.log")["peer_id"].clone();
    let to_b = peers
        .iter()
        .find(|p| p["peer"] == b_id)
        .expect("A connected to B");
    assert_eq!(to_b["relayed"], 1);
    assert_eq!(to_b["direct"], 0);
    assert_eq!(to_b["tcp"], 1);

    let csv = ok(&run(&["connections", "--csv", path(&dir)]));
    assert!(
        csv.starts_with("source,peer,peer_name,opened,closed,direct,relayed,tcp,quic"),
        "{csv}"
    );
    assert!(csv.lines().skip(1).any(|l| l.contains(",peer-b,")), "{csv}");
}

#[test]
fn latency_has_per_peer_percentiles() {
    let log = fixtures().join("trusting/peer-a.log");
    let doc = json(&["latency", path(&log)]);
    let peers = doc["sources"][0]["peers"].as_array().expect("peers");
    assert!(!peers.is_empty());
    for p in peers {
        let n = |k: &str| p[k].as_f64().unwrap_or_else(|| panic!("{k} in {p}"));
        assert!(n("count") >= 1.0);
        assert!(
            n("min_ms") <= n("p50_ms") && n("p50_ms") <= n("p90_ms") && n("p90_ms") <= n("max_ms")
        );
        assert!(n("min_ms") <= n("mean_ms") && n("mean_ms") <= n("max_ms"));
    }
    assert_eq!(doc["sources"][0]["every_ping"], true);

    let text = ok(&run(&["latency", path(&log)]));
    assert!(text.contains("p90 ms"), "{text}");
    let csv = ok(&run(&["latency", "--csv", path(&log)]));
    assert_eq!(
        csv.lines().next(),
        Some("source,peer,peer_name,count,failures,min_ms,p50_ms,p90_ms,max_ms,mean_ms")
    );
    assert_eq!(csv.lines().count(), peers.len() + 1);
}

#[test]
fn tunnels_show_bytes_durations_and_the_refusal() {
    let trusting = fixtures().join("trusting");
    let untrusting = fixtures().join("untrusting");
    let doc = json(&["tunnels", path(&trusting), path(&untrusting)]);
    assert_eq!(doc["sources"].as_array().map(Vec::len), Some(6));
    let client = &doc["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .find(|s| {
            s["source"]
                .as_str()
                .is_some_and(|p| p.ends_with("trusting/peer-a.log") && !p.contains("untrusting"))
        })
        .expect("trusting A")["services"][0];
    assert_eq!(client["service"], "echo");
    assert_eq!(client["side"], "client");
    assert_eq!(client["relayed"], 2);
    assert_eq!(client["bytes_to_service"], 10 << 21);
    assert_eq!(client["bytes_from_service"], 10 << 21);
    assert_eq!(client["duration_ms"]["count"], 2);

    let text = ok(&run(&["tunnels", path(&untrusting.join("peer-a.log"))]));
    assert!(
        text.contains("only through a short relay circuit"),
        "{text}"
    );
    let csv = ok(&run(&[
        "tunnels",
        "--csv",
        path(&untrusting.join("peer-a.log")),
    ]));
    let row = csv.lines().nth(1).expect("a row");
    assert!(row.contains(",echo,client,0,0,0,0,0,0,1,0,0,0,,,"), "{row}");
}

#[test]
fn phases_list_transitions_and_the_step_back_at_shutdown() {
    let relay = fixtures().join("trusting/relay.log");
    let doc = json(&["phases", path(&relay)]);
    let report = &doc["sources"][0];
    let to: Vec<&str> = report["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter_map(|t| t["to"].as_str())
        .collect();
    assert_eq!(
        to,
        [
            "Discovering",
            "Participating",
            "Discovering",
            "ShuttingDown"
        ]
    );
    assert_eq!(report["regressions"][0]["cause"], "ConnectionClosed");
    assert_eq!(report["every_event"], true);

    let text = ok(&run(&["phases", path(&relay)]));
    assert!(text.contains("Steps back to an earlier phase:"), "{text}");
    let csv = ok(&run(&["phases", "--csv", path(&relay)]));
    assert_eq!(
        csv.lines().next(),
        Some("source,at,offset_ms,from,to,cause")
    );
    assert_eq!(csv.lines().count(), 5);
}

#[test]
fn reads_stdin_when_no_path_or_dash_and_skips_bad_lines() {
    let log = std::fs::read(fixtures().join("trusting/peer-b.log")).expect("fixture");
    let from_file = json(&["summary", path(&fixtures().join("trusting/peer-b.log"))]);

    // Text logs, garbage and a torn line mixed in.
    let mut mixed = b"2026-12-06T03:45:28Z  INFO punchgate: a text line\n".to_vec();
    mixed.extend_from_slice(&log);
    mixed.extend_from_slice(b"not json\n{\"torn\": \n[1,2]\n\n");
    for args in [&["summary", "--json"][..], &["summary", "--json", "-"][..]] {
        let out = ok(&run_stdin(args, &mixed));
        let doc: Value = serde_json::from_str(&out).expect("valid JSON");
        let s = &doc["sources"][0];
        assert_eq!(s["source"], "-");
        assert_eq!(s["skipped_lines"], 4, "the blank line is not counted");
        assert_eq!(s["entries"], from_file["sources"][0]["entries"]);
        assert_eq!(
            s["tunnels_server"],
            from_file["sources"][0]["tunnels_server"]
        );
    }
    let text = ok(&run_stdin(&["summary"], &mixed));
    assert!(text.contains("4 lines skipped"), "{text}");
}

#[test]
fn a_line_over_a_mebibyte_is_skipped_not_fatal() {
    let mut input = format!(
        "{{\"level\":\"INFO\",\"message\":\"{}\"}}\n",
        "x".repeat(2 << 20)
    )
    .into_bytes();
    input.extend_from_slice(br#"{"level":"WARN","message":"after the long line"}"#);
    let doc: Value =
        serde_json::from_str(&ok(&run_stdin(&["summary", "--json"], &input))).expect("JSON");
    assert_eq!(doc["sources"][0]["skipped_lines"], 1);
    assert_eq!(
        doc["sources"][0]["top_warnings"][0]["text"],
        "after the long line"
    );
}

#[test]
fn a_missing_path_is_an_error_naming_it() {
    let missing = fixtures().join("no-such.log");
    let out = run(&[
        "summary",
        path(&fixtures().join("trusting/relay.log")),
        path(&missing),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "no partial report");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(path(&missing)), "{stderr}");
}

#[test]
fn a_folder_without_logs_is_an_error() {
    let empty = tempfile::tempdir().expect("temp dir");
    std::fs::write(empty.path().join("notes.txt"), "hello").expect("write");
    let out = run(&["latency", path(empty.path())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no *.log or *.json file"));
}

#[test]
fn json_and_csv_are_mutually_exclusive() {
    let out = run(&[
        "summary",
        "--json",
        "--csv",
        path(&fixtures().join("trusting")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

#[test]
fn coldstart_summary_says_where_and_when_reachable_and_when_tunnels_were_ready() {
    let dir = fixtures().join("coldstart");
    let text = ok(&run(&["summary", path(&dir)]));
    for expected in [
        // A's log holds two runs: started with B, then restarted.
        "2 runs (the node was restarted)",
        "Reachable:\n    through relay (…88v4F4) at +161 ms (run 1, +161 ms after its start)\n    through relay (…88v4F4) at +750 ms (run 2, +161 ms after its start)",
        "--tunnel echo to peer-b (…PonVSA), run 1: ready +522 ms (direct)",
        "--tunnel echo to peer-b (…PonVSA), run 2: ready +265 ms (direct)",
        "Reachable: through relay (…88v4F4) at +145 ms",
        "Tunnels in (server): 2 opened (2 direct, 0 relayed)",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(!text.contains("Reloads:"), "no reload in this run: {text}");

    let doc = json(&["summary", path(&dir)]);
    let a = source(&doc, "peer-a.log");
    assert_eq!(a["runs"], 2);
    let reachable = a["reachable"].as_array().expect("reachable");
    assert_eq!(reachable.len(), 2);
    assert_eq!(reachable[0]["how"], "relay");
    assert_eq!(reachable[0]["relay"], source(&doc, "relay.log")["peer_id"]);
    assert_eq!(reachable[1]["run"], 2);
    let ready = a["tunnels_client"]["readiness"]
        .as_array()
        .expect("readiness");
    assert_eq!(ready.len(), 2);
    for (r, run, ms) in [(&ready[0], 1, 522.106), (&ready[1], 2, 265.481)] {
        assert_eq!(r["service"], "echo");
        assert_eq!(r["run"], run);
        assert_eq!(r["path"], "direct");
        assert_eq!(
            r["bind"].as_str().map(|b| b.starts_with("127.0.0.1:")),
            Some(true)
        );
        let got = r["ready_ms"].as_f64().expect("ready_ms");
        assert!((got - ms).abs() < 0.01, "{r}");
        assert!(
            r["direct_ms"].is_null(),
            "ready over a direct connection: {r}"
        );
        assert_eq!(r["retries"], 0);
    }
    assert_eq!(a["reloads"]["requested"], 0);
    let b = source(&doc, "peer-b.log");
    assert_eq!(b["runs"], 1);
    assert_eq!(b["tunnels_server"]["direct"], 2);
    assert!((b["reachable"][0]["offset_ms"].as_f64().expect("offset") - 144.664).abs() < 0.01);
    // The relay is public from the start: it never says where it is reachable.
    assert_eq!(source(&doc, "relay.log")["reachable"], Value::Array(vec![]));

    let csv = ok(&run(&["summary", "--csv", path(&dir)]));
    let header: Vec<&str> = csv.lines().next().expect("header").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let a_row: Vec<&str> = csv
        .lines()
        .find(|l| l.contains("peer-a.log"))
        .expect("A's row")
        .split(',')
        .collect();
    assert_eq!(a_row[col("reachable_ms")], "161.011");
    assert_eq!(a_row[col("reachable_how")], "relay");
    assert_eq!(a_row[col("tunnels_ready")], "2");
    assert_eq!(a_row[col("tunnels_not_ready")], "0");
}

#[test]
fn coldstart_tunnels_time_readiness_from_each_run_start() {
    let dir = fixtures().join("coldstart");
    let text = ok(&run(&["tunnels", path(&dir)]));
    assert!(
        text.contains("Readiness of each --tunnel, from the node's start (per run):"),
        "{text}"
    );
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("echo ") && l.contains("peer-b (…"))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows[0].contains("+522 ms") && rows[0].contains("direct"),
        "{text}"
    );
    assert!(rows[1].contains("+265 ms"), "{text}");

    let doc = json(&["tunnels", path(&dir)]);
    let client = &source(&doc, "peer-a.log")["services"][0];
    assert_eq!(client["side"], "client");
    assert_eq!(client["readiness"].as_array().map(Vec::len), Some(2));
    let server = &source(&doc, "peer-b.log")["services"][0];
    assert_eq!(server["side"], "server");
    // `tunnel accepted` carries the path now.
    assert_eq!(
        (server["direct"].clone(), server["relayed"].clone()),
        (2.into(), 0.into())
    );
    assert_eq!(server["closed_by_reload"], 0);

    let csv = ok(&run(&["tunnels", "--csv", path(&dir)]));
    let header: Vec<&str> = csv.lines().next().expect("header").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let a_row: Vec<&str> = csv
        .lines()
        .find(|l| l.contains("peer-a.log"))
        .expect("A's row")
        .split(',')
        .collect();
    assert_eq!(a_row.len(), header.len());
    assert_eq!(a_row[col("ready_ms")], "522.106;265.481");
    assert_eq!(a_row[col("direct_ms")], ";");
    assert_eq!(a_row[col("not_ready_retries")], "0");
}

#[test]
fn coldstart_phases_put_the_reachable_moment_in_the_timeline() {
    let log = fixtures().join("coldstart/peer-b.log");
    let text = ok(&run(&["phases", path(&log)]));
    let timeline: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("Transitions:"))
        .skip(1)
        .take(3)
        .collect();
    assert!(
        timeline[0].contains("Initializing -> Discovering"),
        "{text}"
    );
    assert!(
        timeline[1].contains("+145 ms") && timeline[1].contains("reachable through relay"),
        "{text}"
    );
    assert!(
        timeline[2].contains("Discovering -> Participating"),
        "{text}"
    );
    let csv = ok(&run(&["phases", "--csv", path(&log)]));
    assert!(
        csv.lines()
            .nth(2)
            .is_some_and(|l| l.contains(",,reachable,relay 12D3KooW")),
        "{csv}"
    );
}
