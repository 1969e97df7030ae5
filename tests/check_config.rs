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
    let (ok, stdout, stderr) = check(&config, &["--strict"]);
    assert!(
        ok,
        "the defaults follow Standard Webhooks: {stdout}\n{stderr}"
    );
    // outside Standard Webhooks' recommendations: warnings
    config["fleetgate"]["webhook"]["timeout_ms"] = json!(5000);
    config["fleetgate"]["webhook"]["dead_letter_after_s"] = json!(3600);
    let (ok, _, stderr) = check(&config, &["--strict"]);
    assert!(!ok);
    assert!(
        stderr.contains("fleetgate.webhook.timeout_ms")
            && stderr.contains("fleetgate.webhook.dead_letter_after_s")
            && stderr.contains("Standard Webhooks"),
        "{stderr}"
    );
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

/// Runs `fleetgate serve` on `config` and returns its stderr once it exits; panics if it
/// starts listening instead (it wrote `--addrs-file`) or runs past 30 s.
fn serve_refusal(config: &serde_json::Value, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let addrs = dir.path().join("addrs.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .arg("--addrs-file")
        .arg(&addrs)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            assert!(!status.success(), "serve exited 0:\n{stderr}");
            return stderr;
        }
        if addrs.exists() || std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve started (or hung) on a config it should refuse: {config}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Every way `serve` refuses to start because of its config (`ServeError::Tls` and
/// `ServeError::Config` in `app::start`, and the config load before it) is reported by
/// `check-config` with the same key, so a CI check or the chart's check catches it before a
/// pod crash-loops. Left out, because they are facts of the moment and not of the config: a
/// port another process holds (`ServeError::Bind`) and a broker that does not answer
/// (`ServeError::Cluster`).
#[test]
fn every_start_up_refusal_of_serve_is_reported_by_check_config_first() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let garbage = write_file(dir, "garbage.pem", "this is not PEM\n");
    let empty = write_file(dir, "empty.json", "");
    let not_a_dir = write_file(dir, "plain-file", "x");
    let bad_sites = write_file(
        dir,
        "sites.geojson",
        r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"id":"a"},"geometry":{"type":"Point","coordinates":[200,95]}}]}"#,
    );
    let path = |p: &std::path::PathBuf| p.display().to_string();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "no tls section",
            "tls",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("tls");
            }),
        ),
        (
            "CA bundle that is not PEM",
            "tls.ca_file",
            Box::new({
                let g = path(&garbage);
                move |c| c["tls"]["ca_file"] = json!(g)
            }),
        ),
        (
            "server_cert names a private key",
            "tls.server_cert",
            Box::new({
                let k = pki.path("server.key");
                move |c| c["tls"]["server_cert"] = json!(k)
            }),
        ),
        (
            "server_key names a certificate",
            "tls.server_key",
            Box::new({
                let p = pki.path("server.pem");
                move |c| c["tls"]["server_key"] = json!(p)
            }),
        ),
        (
            "key of another certificate",
            "tls.server_key",
            Box::new({
                let k = pki.path("ca.key");
                move |c| c["tls"]["server_key"] = json!(k)
            }),
        ),
        (
            "admin API without a token",
            "fleetgate.admin.token",
            Box::new(|c| {
                c["fleetgate"]["admin"]["token"] = json!("");
            }),
        ),
        (
            "kafka routed, no section",
            "records.V",
            Box::new(|c| {
                c["records"]["V"] = json!(["kafka"]);
            }),
        ),
        (
            "mqtt routed, no section",
            "records.V",
            Box::new(|c| {
                c["records"]["V"] = json!(["mqtt"]);
            }),
        ),
        (
            "webhook routed, no section",
            "fleetgate.webhook",
            Box::new(|c| {
                c["records"]["V"] = json!(["webhook"]);
            }),
        ),
        (
            "logger file in a missing directory",
            "fleetgate.logger_file",
            Box::new({
                let f = dir.join("no-such-dir/events.log").display().to_string();
                move |c| c["fleetgate"]["logger_file"] = json!(f)
            }),
        ),
        (
            "data_dir is a file",
            "fleetgate.data_dir",
            Box::new({
                let f = path(&not_a_dir);
                move |c| c["fleetgate"]["data_dir"] = json!(f)
            }),
        ),
        (
            "data_dir under a file",
            "fleetgate.data_dir",
            Box::new({
                let f = not_a_dir.join("data").display().to_string();
                move |c| c["fleetgate"]["data_dir"] = json!(f)
            }),
        ),
        (
            "sites file with a bad feature",
            "fleetgate.sites_file",
            Box::new({
                let f = path(&bad_sites);
                move |c| c["fleetgate"]["sites_file"] = json!(f)
            }),
        ),
        (
            "VIN allow-list that is not JSON",
            "data_connectors.file.path",
            Box::new({
                let f = path(&empty);
                move |c| {
                    c["data_connectors"] =
                        json!({"file": {"capabilities": ["vin_allowed"], "path": f}})
                }
            }),
        ),
        (
            "proxy listener without trusted proxies",
            "fleetgate.proxy_mtls",
            Box::new(|c| {
                c["fleetgate"]["proxy_mtls"] = json!({"listen": "127.0.0.1:0", "header": "x-forwarded-client-cert", "trusted_proxies": []});
            }),
        ),
        (
            "cluster mode without kafka",
            "fleetgate.cluster",
            Box::new(|c| {
                c["fleetgate"]["cluster"] = json!({"instance_id": "a"});
            }),
        ),
        (
            "Smartcar without the admin API",
            "fleetgate.sources.smartcar",
            Box::new(|c| {
                c["fleetgate"].as_object_mut().unwrap().remove("admin");
                c["fleetgate"]["sources"] =
                    json!({"smartcar": {"management_token": "0123456789abcdef0123"}});
            }),
        ),
        (
            "Tesla partner key that is a certificate",
            "fleetgate.tesla.private_key_file",
            Box::new({
                let p = pki.path("server.pem");
                move |c| {
                    c["fleetgate"]["tesla"] = json!({"private_key_file": p, "hostname": "telemetry.example.com", "port": 443})
                }
            }),
        ),
    ];
    for (what, key, edit) in &cases {
        let mut config = base_config(&pki);
        edit(&mut config);
        let (ok, stdout, stderr) = check(&config, &[]);
        assert!(!ok, "{what}: check-config said ok:\n{stdout}{stderr}");
        assert!(
            stderr.contains(key),
            "{what}: check-config does not name `{key}`:\n{stderr}"
        );
        let refused = serve_refusal(&config, &[]);
        assert!(
            refused.contains(key),
            "{what}: serve's refusal does not name `{key}`:\n{refused}"
        );
    }
    // the one start-up option that changes the verdict is checked the same way
    let mut config = base_config(&pki);
    config["fleetgate"]["admin"]["token"] = json!("");
    let (ok, _, stderr) = check(&config, &["--insecure-admin"]);
    assert!(ok, "{stderr}");
    let mut public = config.clone();
    public["fleetgate"]["admin"]["listen"] = json!("0.0.0.0:0");
    let (ok, _, stderr) = check(&public, &["--insecure-admin"]);
    assert!(!ok && stderr.contains("fleetgate.admin.token"), "{stderr}");
    assert!(serve_refusal(&public, &["--insecure-admin"]).contains("fleetgate.admin.token"));
}

#[test]
fn a_server_certificate_near_expiry_is_a_warning_and_the_dev_set_passes() {
    let pki = Pki::new();
    let (ok, stdout, stderr) = check(&base_config(&pki), &["--strict"]);
    assert!(ok, "the dev PKI passes --strict:\n{stdout}{stderr}");
    for (days, says) in [(10, "expires on"), (-1, "expired on")] {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(30);
        params.not_after = now + time::Duration::days(days);
        let cert = params.self_signed(&key).unwrap();
        let cert_path = write_file(pki.dir.path(), &format!("short-{days}.pem"), &cert.pem());
        let key_path = write_file(
            pki.dir.path(),
            &format!("short-{days}.key"),
            &key.serialize_pem(),
        );
        let mut config = base_config(&pki);
        config["tls"]["server_cert"] = json!(cert_path);
        config["tls"]["server_key"] = json!(key_path);
        let (ok, _, stderr) = check(&config, &[]);
        assert!(ok, "a warning, not a problem: {stderr}");
        assert!(
            stderr.contains("tls.server_cert") && stderr.contains(says),
            "{days} days: {stderr}"
        );
    }
}
