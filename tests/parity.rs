//! Drop-in parity with Tesla's server as a new user meets it: Tesla's own config shape starts
//! unchanged (embedded vehicle CAs, its current keys recognised, typos named with a fix), a
//! reconnect storm from one address (carrier NAT, a load balancer) is paced rather than
//! refused, and the `data_connectors.file` allow list works and is re-read.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// A config as Tesla documents it: no `tls.ca_file`, its current keys, and three typos.
fn tesla_config(pki: &Pki) -> serde_json::Value {
    json!({
        "host": "127.0.0.1",
        "port": 0,
        "status_port": 0,
        "log_level": "info",
        "json_log_enable": false,
        "namespace": "tesla_telemetry",
        "reliable_ack": false,
        "monitoring": {"prometheus_metrics_port": 0, "prometheus_metrics_host": "127.0.0.1",
                       "prometheus_metric_port": 9273, "profiler_port": 4269},
        "rate_limit": {"enabled": false, "message_interval_time": 30, "message_limit": 1000,
                       "enabeld": true},
        "records": {"alerts": ["logger"], "errors": ["logger"], "V": ["logger"]},
        "data_connectors": {"redis": {"capabilities": ["vin_allowed"],
                            "vin_allowed": {"prefix": "vin_allowed:", "allow_on_failure": true}}},
        "tls": {"server_cert": pki.path("server.pem"), "server_key": pki.path("server.key"),
                "ca_flie": "ca.pem"}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teslas_example_config_starts_unchanged_and_trusts_teslas_cas() {
    let pki = Pki::new();
    let server = Server::start(&tesla_config(&pki));
    let stderr = server.stderr_text();
    for expected in [
        "unknown config key `tls.ca_flie` is ignored: did you mean `tls.ca_file`?",
        "unknown config key `rate_limit.enabeld` is ignored: did you mean `rate_limit.enabled`?",
        "unknown config key `monitoring.prometheus_metric_port` is ignored: did you mean `monitoring.prometheus_metrics_port`?",
        "data_connectors.redis",
        "`reliable_ack`",
        "the embedded Tesla production CA bundle",
    ] {
        assert_eq!(
            stderr.matches(expected).count(),
            1,
            "`{expected}` must be logged exactly once:\n{stderr}"
        );
    }
    assert!(!stderr.contains("typo"), "{stderr}");
    // vehicles are verified against Tesla's CAs: a dev-PKI vehicle does not chain to them
    let cert = pki.pki.vehicle(VIN).unwrap();
    assert!(connect(&server, &pki.ca_pem(), &cert, &[]).await.is_err());
    assert_eq!(
        wait_metric(
            &server,
            "fleetgate_handshakes_total{result=\"untrusted_issuer\"}",
            1.0
        )
        .await,
        1.0
    );
}

#[test]
fn a_start_up_error_is_printed_once() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let mut config = tesla_config(&pki);
    config["tls"]["server_key"] = json!(pki.path("ca.pem")); // a certificate, not a key
    std::fs::write(&path, config.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("tls.server_key").count(),
        1,
        "the error must be printed once:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_from_one_address_is_paced_not_refused() {
    const VEHICLES: usize = 120;
    let pki = Pki::new();
    let mut config = base_config(&pki);
    // few handshake slots, so the storm has to queue for them; per-IP limiting stays at its
    // default (off): every vehicle comes from 127.0.0.1, like cars behind carrier NAT
    config["fleetgate"]["limits"] = json!({"max_handshakes_in_flight": 4});
    let server = Server::start(&config);
    let certs: Vec<_> = (0..VEHICLES)
        .map(|i| pki.pki.vehicle(&format!("5YJ3E1EA7KF{i:06}")).unwrap())
        .collect();
    let ca = pki.ca_pem();
    let mut tasks = tokio::task::JoinSet::new();
    for cert in certs {
        let addr = server.vehicles.clone();
        let ca = ca.clone();
        tasks.spawn(async move {
            let config = fleetgate::tools::client::client_config_from_pem(
                &ca,
                &cert.chain_pem,
                &cert.key_pem,
            )
            .unwrap();
            fleetgate::tools::client::connect(&addr, "localhost", config, &[]).await
        });
    }
    let mut sockets = Vec::new();
    while let Some(done) = tasks.join_next().await {
        sockets.push(done.unwrap().expect("every vehicle of the storm connects"));
    }
    assert_eq!(sockets.len(), VEHICLES);
    let text = server.metrics_text();
    assert_eq!(
        metric_value(
            &text,
            "fleetgate_connections_total{result=\"ip_rate_limited\"}"
        ),
        0.0
    );
    assert_eq!(
        metric_value(&text, "fleetgate_handshakes_total{result=\"ok\"}"),
        VEHICLES as f64
    );
    assert!(
        metric_value(
            &text,
            "fleetgate_handshake_admission_total{result=\"waited\"}"
        ) > 0.0,
        "with 4 slots some handshakes must have queued:\n{text}"
    );
    assert_eq!(metric_value(&text, "fleetgate_handshakes_in_flight"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_connector_file_is_an_allow_list_that_is_re_read() {
    const OTHER: &str = "5YJ3E1EA7KF000002";
    let pki = Pki::new();
    let list = pki.dir.path().join("allowed.json");
    std::fs::write(&list, json!({"vins_allowed": [VIN]}).to_string()).unwrap();
    let mut config = base_config(&pki);
    config["data_connectors"] = json!({"file": {"capabilities": ["vin_allowed"], "path": list}});
    let server = Server::start(&config);
    let ca = pki.ca_pem();
    let allowed = pki.pki.vehicle(VIN).unwrap();
    let other = pki.pki.vehicle(OTHER).unwrap();
    let mut ws = connect(&server, &ca, &allowed, &[])
        .await
        .expect("listed VIN");
    assert!(
        connect(&server, &ca, &other, &[]).await.is_err(),
        "unlisted VIN"
    );
    assert_eq!(
        server.metric("fleetgate_identity_refused_total{reason=\"vin_not_allowed\"}"),
        1.0
    );

    // the file changes: OTHER is allowed, VIN is not (its open socket is closed)
    tokio::time::sleep(Duration::from_millis(1100)).await; // a new mtime
    std::fs::write(&list, json!({"vins_allowed": [OTHER]}).to_string()).unwrap();
    let closed = tokio::time::timeout(
        Duration::from_secs(10),
        fleetgate::tools::client::next_binary(&mut ws),
    )
    .await
    .expect("the refused vehicle's socket is closed after the reload");
    assert!(closed.is_none() || closed.unwrap().is_err());
    connect(&server, &ca, &other, &[])
        .await
        .expect("newly listed VIN connects");
}

#[test]
fn the_listening_json_log_line_carries_its_addresses_as_fields() {
    use std::io::{BufRead, BufReader};
    let pki = Pki::new();
    let mut config = base_config(&pki);
    config["json_log_enable"] = json!(true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut listening = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("a JSON log line, not {line:?}: {e}"));
        if v["fields"]["message"] == "listening" {
            listening = Some(v);
            break;
        }
    }
    child.kill().ok();
    child.wait().ok();
    let v = listening.expect("a listening line");
    let fields = &v["fields"];
    let vehicles: std::net::SocketAddr = fields["vehicles"].as_str().unwrap().parse().unwrap();
    assert_eq!(vehicles.ip().to_string(), "127.0.0.1");
    for key in ["metrics", "status", "admin"] {
        assert!(
            fields[key]
                .as_str()
                .unwrap()
                .parse::<std::net::SocketAddr>()
                .is_ok(),
            "{key}: {v}"
        );
    }
    assert_eq!(fields["proxy"], "off");
}

/// A container or unit written for Tesla's server starts it as `fleet-telemetry
/// -config=FILE`: the same arguments start fleetgate's server.
#[test]
fn teslas_command_line_starts_the_server() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, base_config(&pki).to_string()).unwrap();
    for form in ["-config=", "-config"] {
        let addrs = dir.path().join(format!("addrs{form}.json"));
        let mut command = std::process::Command::new(server_binary());
        if form.ends_with('=') {
            command.arg(format!("{form}{}", config.display()));
        } else {
            command.arg(form).arg(&config);
        }
        let mut child = command
            .arg("--addrs-file")
            .arg(&addrs)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let bound: fleetgate::app::BoundAddrs = loop {
            if let Ok(text) = std::fs::read_to_string(&addrs) {
                break serde_json::from_str(&text).unwrap();
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "`fleetgate {form} FILE` did not start the server"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "{form}: not listening after 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // and the running version is on /metrics
        let metrics = http_get(&bound.metrics.unwrap().to_string(), "/metrics");
        let series = format!(
            "fleetgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(metrics.contains(&series), "{series} missing");
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Tesla's server logs logrus JSON (`json_log_enable`): `level`, `msg`, `time` and the fields
/// at the top level. `fleetgate.log_format: "tesla"` (or `serve --log-format tesla`) writes
/// the same shape, so pipelines keyed on `msg` and `level` keep working.
#[test]
fn the_tesla_log_format_writes_logrus_shaped_json() {
    let pki = Pki::new();
    let mut config = base_config(&pki);
    config["fleetgate"]["log_format"] = json!("tesla");
    config["reliable_ack_sources"] = json!({"V": "logger"}); // a warning at start-up
    let server = Server::start(&config);
    let lines: Vec<serde_json::Value> = server
        .stderr_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let listening = lines
        .iter()
        .find(|l| l["msg"] == "listening")
        .expect("the listening line");
    assert_eq!(listening["level"], "info");
    assert_eq!(listening["vehicles"], json!(server.vehicles));
    let time = listening["time"].as_str().unwrap();
    time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("time `{time}` is not RFC 3339: {e}"));
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "warning" && l["msg"].as_str().unwrap().contains("logger")),
        "logrus names warnings `warning`"
    );
    drop(server);

    // the command-line flag, here on an error: the last line says why it stopped
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = base_config(&pki);
    config["port"] = json!(taken.local_addr().unwrap().port());
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "config.json", &config.to_string());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["serve", "--log-format", "tesla", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let last: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or_default(),
    )
    .expect("JSON");
    assert_eq!(last["level"], "error");
    assert!(
        last["msg"].as_str().unwrap().contains("cannot listen"),
        "{last}"
    );
}

/// Tesla's server listens on `host` whatever it is, a name too (a chart sets `app`, a pod's
/// own name). fleetgate resolves a name when it binds; `check-config` resolves it the same way
/// and refuses one that does not resolve.
#[test]
fn a_host_name_in_host_is_resolved_and_bound() {
    // a loopback name this machine knows without DNS (from /etc/hosts), else localhost
    let name = std::fs::read_to_string("/etc/hosts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.trim_start().starts_with("127."))
        .flat_map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|n| n != "localhost" && !n.contains('_'))
        .unwrap_or_else(|| "localhost".into());
    let pki = Pki::new();
    let mut config = base_config(&pki);
    config["host"] = json!(name);
    let dir = tempfile::tempdir().unwrap();
    let check_config = |name: &str, config: &serde_json::Value| {
        let path = write_file(dir.path(), name, &config.to_string());
        std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = check_config("config.json", &config);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::start(&config);
    let bound: std::net::SocketAddr = server.vehicles.parse().unwrap();
    assert!(bound.ip().is_loopback(), "`{name}` bound {bound}");

    // a name under .invalid never resolves (RFC 6761)
    config["host"] = json!("fleetgate-test.invalid");
    let out = check_config("bad.json", &config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("host:")
            && stderr.contains("fleetgate-test.invalid"),
        "{stderr}"
    );
}
