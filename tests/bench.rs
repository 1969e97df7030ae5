//! `fleetgate bench`: the load client against the real server (a small fleet), and the bare
//! comparison server acking the same frames.

mod common;

use std::process::Command;

use common::*;

fn bench_load(target: &str, pki: &Pki, pid: Option<u32>, extra: &[&str]) -> serde_json::Value {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetgate"));
    cmd.args(["bench", "load", "--target", target, "--pki"])
        .arg(pki.dir.path())
        .args([
            "--vehicles",
            "6",
            "--rate",
            "5",
            "--warmup",
            "1",
            "--duration",
            "2",
        ])
        .args(["--sources", "2", "--json"])
        .arg(out.path())
        .args(extra);
    if let Some(pid) = pid {
        cmd.args(["--server-pid", &pid.to_string()]);
    }
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "bench load failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("ack latency"), "{table}");
    serde_json::from_slice(&std::fs::read(out.path()).unwrap()).unwrap()
}

#[test]
fn bench_load_streams_a_fleet_and_matches_every_ack() {
    let pki = Pki::new();
    let server = Server::start(&base_config(&pki));
    let report = bench_load(
        &server.vehicles,
        &pki,
        Some(server.child.id()),
        &["--storm"],
    );
    assert_eq!(report["connect"]["established"], 6, "{report}");
    let stream = &report["stream"];
    let (sent, acked) = (
        stream["sent"].as_u64().unwrap(),
        stream["acked"].as_u64().unwrap(),
    );
    assert!(sent >= 40, "6 vehicles × 5 Hz × 2 s: {stream}");
    assert!(acked + 6 >= sent, "acks match the frames sent: {stream}");
    assert_eq!(stream["errors"], 0);
    assert_eq!(stream["closed"], 0);
    assert!(stream["ack_latency"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert!(stream["server_cpu_s"].as_f64().unwrap() > 0.0, "{stream}");
    assert!(report["server_rss_bytes"][1].as_u64().unwrap() > 1_000_000);
    assert_eq!(
        report["storm"]["established"], 6,
        "every vehicle reconnected"
    );
    // the server really received them: one logger line per frame
    let records = server.wait_for_records(acked as usize, std::time::Duration::from_secs(5), |v| {
        v["topic"] == "V"
    });
    assert!(records.len() as u64 >= acked);
}

#[test]
fn the_bare_server_acks_the_bench_fleet() {
    let pki = Pki::new();
    let mut bare = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["bench", "bare-server", "--listen", "127.0.0.1:0", "--pki"])
        .arg(pki.dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(bare.stderr.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("bare-ack-server listening ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();
    let report = bench_load(&addr, &pki, Some(bare.id()), &[]);
    let _ = bare.kill();
    let _ = bare.wait();
    assert_eq!(report["connect"]["established"], 6, "{report}");
    assert!(
        report["stream"]["acked"].as_u64().unwrap() >= 40,
        "{report}"
    );
    assert_eq!(report["stream"]["errors"], 0);
}
