//! `fleetgate demo` runs to completion with no external services, and a vehicle arrives and
//! finishes charging.

use std::process::Command;

#[test]
fn demo_runs_to_completion_with_arrival_and_charge_complete() {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["demo", "--pace-ms", "5"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for needle in [
        "fleetgate.arrival.approaching",
        "fleetgate.arrival.arrived",
        "fleetgate.arrival.charge_complete",
        "fleetgate.charging.started",
        "fleetgate.charging.stopped",
        "fleetgate.site.exited",
        "summary",
    ] {
        assert!(
            stdout.contains(needle),
            "`{needle}` missing from:\n{stdout}"
        );
    }
    let line = |label: &str| -> u64 {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert!(line("frames sent") > 50);
    assert_eq!(
        line("frames sent"),
        line("acks received"),
        "every frame acked"
    );
    assert!(stderr.contains("one-time token"));
}

#[test]
fn demo_json_prints_cloudevents() {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["demo", "--json", "--pace-ms", "5"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    // stdout is JSON lines only (a consumer pipes it into jq); the summary is on stderr
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l:?}: {e}")))
        .collect();
    assert!(String::from_utf8_lossy(&out.stderr).contains("summary"));
    assert!(events.len() >= 10);
    assert!(events
        .iter()
        .all(|e| e["specversion"] == "1.0" && e["id"].as_str().is_some_and(|id| id.len() == 36)));
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "fleetgate.arrival.arrived"
                && e["data"]["watch_id"] == "order-1001")
    );
}
