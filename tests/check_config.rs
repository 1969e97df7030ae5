//! `fleetgate check-config`: validates a config as `serve` would, opens no listener, prints
//! every problem and exits non-zero on one. Kafka properties are checked by librdkafka itself,
//! so what this build supports (TLS, SASL, every codec) is what the check accepts.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

fn check(config: &serde_json::Value, args: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .arg("check-config")
        .args(args)
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_production_kafka_config_passes_and_opens_no_listener() {
    let pki = Pki::new();
    // the vehicle port is taken: serve would fail to bind, check-config must not try
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = base_config(&pki);
    config["port"] = json!(taken.local_addr().unwrap().port());
    config["records"] = json!({"V": ["kafka"]});
    config["kafka"] = json!({
        "bootstrap.servers": "broker-1:9096",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "fleetgate",
        "sasl.password": "s3cret-value",
        "compression.type": "zstd",
    });
    let (ok, stdout, stderr) = check(&config, &[]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
    assert!(!stdout.contains("s3cret-value") && !stderr.contains("s3cret-value"));
    // every codec and mechanism of a managed cluster is built in
    for (key, value) in [
        ("compression.type", "lz4"),
        ("compression.type", "snappy"),
        ("compression.type", "gzip"),
        ("sasl.mechanisms", "SCRAM-SHA-256"),
        ("sasl.mechanisms", "PLAIN"),
        ("security.protocol", "SSL"),
    ] {
        let mut c = config.clone();
        c["kafka"][key] = json!(value);
        let (ok, stdout, stderr) = check(&c, &[]);
        assert!(ok, "{key}={value}: {stdout}\n{stderr}");
    }
    let mut oidc = config.clone();
    oidc["kafka"] = json!({
        "bootstrap.servers": "broker-1:9096",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "OAUTHBEARER",
        "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.client.id": "fleetgate",
        "sasl.oauthbearer.client.secret": "oidc-secret",
        "sasl.oauthbearer.token.endpoint.url": "https://idp.example.com/oauth2/token",
    });
    let (ok, stdout, stderr) = check(&oidc, &[]);
    assert!(ok, "OAUTHBEARER / OIDC: {stdout}\n{stderr}");
}

#[test]
fn every_problem_is_printed_and_the_exit_code_is_non_zero() {
    let pki = Pki::new();
    let mut config = base_config(&pki);
    config["records"] = json!({"V": ["kafka"]});
    config["kafka"] = json!({
        "bootstrap.servers": "broker-1:9096",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "fleetgate",
        "compression.type": "brotli",
        "no.such.property": 1,
    });
    config["fleetgate"]["limits"] = json!({"idle_timeout_s": 0});
    let (ok, _, stderr) = check(&config, &[]);
    assert!(!ok);
    for key in [
        "kafka.compression.type",
        "kafka.no.such.property",
        "kafka.sasl.password",
        "FLEETGATE_KAFKA_SASL_PASSWORD",
        "fleetgate.limits.idle_timeout_s",
    ] {
        assert!(stderr.contains(key), "`{key}` not reported:\n{stderr}");
    }
}

#[test]
fn strict_makes_warnings_fail_and_file_checks_can_be_left_to_the_target_machine() {
    let pki = Pki::new();
    let mut config = base_config(&pki);
    config["tls"]["ca_flie"] = json!("x");
    let (ok, _, stderr) = check(&config, &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("did you mean `tls.ca_file`?"), "{stderr}");
    let (ok, _, stderr) = check(&config, &["--strict"]);
    assert!(!ok, "{stderr}");

    // a config rendered for a pod names files that exist only there
    let mut pod = base_config(&pki);
    pod["tls"] = json!({"server_cert": "/etc/fleetgate/tls/tls.crt", "server_key": "/etc/fleetgate/tls/tls.key"});
    let (ok, _, stderr) = check(&pod, &[]);
    assert!(!ok && stderr.contains("tls.server_cert"), "{stderr}");
    let (ok, _, stderr) = check(&pod, &["--no-file-checks", "--strict"]);
    assert!(ok, "{stderr}");
}

#[test]
fn webhook_problems_are_named_with_their_keys() {
    let pki = Pki::new();
    let mut config = base_config(&pki);
    config["records"] = json!({"V": ["webhook"]});
    // routed to, but no section
    let (ok, _, stderr) = check(&config, &[]);
    assert!(!ok);
    assert!(stderr.contains("fleetgate.webhook"), "{stderr}");
    config["fleetgate"]["webhook"] = json!({"endpoints": [
        {"name": "orders", "url": "ftp://orders", "secret": "not-whsec", "events": ["fleetgate.nope.*"]},
        {"name": "ops", "url": "https://ops.example.com/x", "secret_file": "missing-secret"}],
        "retry_max_ms": 0});
    let (ok, _, stderr) = check(&config, &[]);
    assert!(!ok);
    for key in [
        "fleetgate.webhook.endpoints[0].url",
        "fleetgate.webhook.endpoints[0].secret",
        "fleetgate.webhook.endpoints[0].events",
        "fleetgate.webhook.endpoints[1].secret_file",
        "fleetgate.webhook.retry_max_ms",
    ] {
        assert!(stderr.contains(key), "`{key}` not reported:\n{stderr}");
    }
    // a good one passes
    config["fleetgate"]["webhook"] = json!({"endpoints": [
        {"name": "orders", "url": "https://orders.example.com/x",
         "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "events": ["fleetgate.arrival.*"]}]});
    let (ok, stdout, stderr) = check(&config, &[]);
    assert!(ok, "{stdout}\n{stderr}");
}

#[test]
fn problems_and_warnings_are_reported_together_and_as_json_for_ci() {
    let pki = Pki::new();
    let mut config = base_config(&pki);
    config["tls"]["ca_flie"] = json!("x"); // a warning (unknown key)
    config["fleetgate"]["limits"] = json!({"idle_timeout_s": 0}); // a problem
                                                                  // text: the warning is not hidden by the problem
    let (ok, _, stderr) = check(&config, &[]);
    assert!(!ok);
    assert!(
        stderr.contains("did you mean `tls.ca_file`?")
            && stderr.contains("fleetgate.limits.idle_timeout_s"),
        "{stderr}"
    );
    // JSON: one object on stdout, the same exit code
    let (ok, stdout, _) = check(&config, &["--json"]);
    assert!(!ok);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["ok"], false);
    assert!(report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["key"] == "fleetgate.limits.idle_timeout_s"
            && p["problem"].as_str().is_some_and(|t| !t.is_empty())));
    assert!(report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains("tls.ca_flie")));
    assert!(report["error"].is_null());
    // a clean config, and one that is not JSON
    let (ok, stdout, _) = check(&base_config(&pki), &["--json"]);
    assert!(ok);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (report["ok"].clone(), report["problems"].clone()),
        (json!(true), json!([]))
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"port\": ").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["check-config", "--json"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("JSON even for an unreadable config");
    assert!(
        report["error"].as_str().unwrap().contains("not valid"),
        "{report}"
    );
}
