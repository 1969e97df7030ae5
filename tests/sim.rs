//! `fleetgate sim` against a running server: every frame acked, certificates made and cached.

mod common;

use common::*;

#[test]
fn sim_gets_every_frame_acked() {
    let pki = Pki::new();
    let server = Server::start(&base_config(&pki));
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
            .args([
                "sim",
                "--server",
                &server.vehicles,
                "--vehicles",
                "4",
                "--rate",
                "10",
                "--duration",
                "2",
                "--certs",
            ])
            .arg(pki.dir.path())
            .output()
            .unwrap()
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value = |label: &str| -> f64 {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(value("vehicles connected"), 4.0);
    // no terminal here: progress as plain lines while it runs
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fleetgate sim: 1/2 s, ") && stderr.contains("vehicles streaming"),
        "{stderr}"
    );
    assert!(value("frames sent") >= 40.0, "{stdout}");
    assert_eq!(value("frames sent"), value("frames acked"));
    assert!(value("ack latency p99 (ms)") > 0.0);
    // certificates were made from the dev CA and cached for the next run
    assert!(pki
        .dir
        .path()
        .join("vehicles/5YJ3E1EA7KF000004.pem")
        .is_file());
    assert!(run().status.success());
    // the server saw the four vehicles
    let (_, v) = server.admin("GET", "/v1/vehicles/5YJ3E1EA7KF000003", None);
    assert!(v["state"]["position"]["lat"].as_f64().is_some(), "{v}");
}
