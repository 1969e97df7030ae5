//! `fleetgate demo`: everything on an embedded default, no external services. Dev certificates
//! in a temp folder, the real server (logger sink to a file), the admin API with a one-time
//! token, a small site set and a watch created through the API, and three simulated vehicles
//! over real mTLS websockets that drive, arrive, charge and leave. Events print as readable
//! lines (or CloudEvents JSON with `--json`); a summary table ends it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LoadedConfig};
use crate::event::Event;
use crate::sinks::{DeliveryTicket, PublishError, Sink, SinkRecord};
use crate::tools::certs::DevPki;
use crate::tools::sim::{send_and_wait_ack, SimVehicle};
use crate::wire::proto::vehicle_data::DetailedChargeStateValue as Dcs;
use crate::wire::EnvelopeWriter;

const CAFE: (f64, f64) = (30.2672, -97.7431);
const CHARGER: (f64, f64) = (30.2665, -97.7440);
const MARKET: (f64, f64) = (30.2620, -97.7280);

/// Prints events as they happen and counts them.
struct EventPrinter {
    json: bool,
    counts: Mutex<BTreeMap<&'static str, u64>>,
    site_names: BTreeMap<&'static str, &'static str>,
}

impl Sink for EventPrinter {
    fn name(&self) -> &'static str {
        "demo-printer"
    }

    fn publish(
        &self,
        _record: &SinkRecord<'_>,
        ticket: DeliveryTicket,
    ) -> Result<(), PublishError> {
        ticket.complete(true);
        Ok(())
    }

    fn publish_event(
        &self,
        event: &Event,
        json: &[u8],
        ticket: DeliveryTicket,
    ) -> Result<(), PublishError> {
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(event.kind.as_str())
            .or_default() += 1;
        if self.json {
            println!("{}", String::from_utf8_lossy(json));
        } else {
            let d = &event.data;
            let site = d
                .get("site_id")
                .and_then(|v| v.as_str())
                .map(|s| self.site_names.get(s).copied().unwrap_or(s))
                .unwrap_or("-");
            let num = |k: &str| d.get(k).and_then(|v| v.as_f64());
            let detail = match event.kind.as_str() {
                "fleetgate.arrival.approaching" => format!(
                    "ETA {:.1} min, SoC {:.1}%",
                    num("minutes_to_arrival").unwrap_or(0.0),
                    num("soc").unwrap_or(0.0)
                ),
                "fleetgate.arrival.arrived" => format!(
                    "SoC at arrival {:.1}%",
                    num("soc_at_arrival").unwrap_or(0.0)
                ),
                "fleetgate.arrival.charge_complete" => format!(
                    "SoC {:.1}% ({})",
                    num("soc").unwrap_or(0.0),
                    d.get("trigger").and_then(|v| v.as_str()).unwrap_or("")
                ),
                "fleetgate.charging.started" => format!("SoC {:.1}%", num("soc").unwrap_or(0.0)),
                "fleetgate.charging.stopped" => format!(
                    "+{:.1} kWh in {} min, +{:.1}% SoC ({})",
                    num("energy_added_kwh").unwrap_or(0.0),
                    num("duration_s").unwrap_or(0.0) as i64 / 60,
                    num("soc_gained").unwrap_or(0.0),
                    d.get("reason").and_then(|v| v.as_str()).unwrap_or("")
                ),
                "fleetgate.site.exited" => {
                    format!("after {} min", num("dwell_s").unwrap_or(0.0) as i64 / 60)
                }
                _ => String::new(),
            };
            let time = event.time_rfc3339();
            let clock = time.get(11..19).unwrap_or(&time);
            println!(
                "  {clock}  {}  {:<34} {:<22} {detail}",
                event.vin,
                event.kind.as_str(),
                site
            );
        }
        ticket.complete(true);
        Ok(())
    }

    fn flush(&self, _timeout: Duration) -> usize {
        0
    }
}

/// A tiny HTTP/1.1 client for the demo's admin calls (loopback only).
async fn admin_call(
    addr: std::net::SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<u16, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if !(200..300).contains(&status) {
        return Err(format!(
            "{method} {path} → {status}: {}",
            text.split("\r\n\r\n").nth(1).unwrap_or("")
        ));
    }
    Ok(status)
}

/// One vehicle's script: a list of steps, each producing one frame.
enum Step {
    Drive {
        to: (f64, f64),
        kmh: f64,
        dest: Option<(f64, f64)>,
    },
    Park {
        secs: i64,
    },
    Charge {
        kw: f64,
        until_soc: f64,
    },
    State(Dcs),
}

struct Totals {
    frames: AtomicU64,
    acks: AtomicU64,
}

/// What every demo vehicle shares.
struct DemoCtx {
    addr: String,
    ca_pem: String,
    pace: Duration,
    totals: Totals,
    stop: CancellationToken,
}

async fn run_vehicle(
    ctx: Arc<DemoCtx>,
    pair: crate::tools::certs::PemPair,
    mut v: SimVehicle,
    script: Vec<Step>,
) -> Result<(), String> {
    let config =
        crate::tools::client::client_config_from_pem(&ctx.ca_pem, &pair.chain_pem, &pair.key_pem)
            .map_err(|e| e.to_string())?;
    let mut ws = crate::tools::client::connect(
        &ctx.addr,
        "localhost",
        config,
        &[("Version", "demo-2025.44"), ("X-Network-Interface", "wifi")],
    )
    .await
    .map_err(|e| format!("{}: {e}", v.vin))?;
    let mut writer = EnvelopeWriter::new();
    for step in script {
        loop {
            if ctx.stop.is_cancelled() {
                return Ok(());
            }
            let done = match &step {
                Step::Drive { to, kmh, dest } => {
                    v.destination = *dest;
                    v.charge_state = Dcs::DetailedChargeStateDisconnected;
                    v.drive_toward(*to, *kmh, 15)
                }
                Step::Park { secs } => {
                    v.clock_s += secs;
                    v.speed_kmh = 0.0;
                    v.destination = None;
                    true
                }
                Step::Charge { kw, until_soc } => {
                    v.charge(*kw, 60);
                    v.soc >= *until_soc
                }
                Step::State(s) => {
                    v.clock_s += 30;
                    v.charge_state = *s;
                    true
                }
            };
            let (txid, frame) = v.frame(&mut writer);
            ctx.totals.frames.fetch_add(1, Ordering::Relaxed);
            send_and_wait_ack(&mut ws, &txid, frame, Duration::from_secs(5)).await?;
            ctx.totals.acks.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(ctx.pace).await;
            if done {
                break;
            }
        }
    }
    let _ = futures_util::SinkExt::close(&mut ws).await;
    Ok(())
}

/// Runs the demo. `pace` is the real time between frames of one vehicle.
pub async fn run(json_output: bool, pace: Duration) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("fleetgate-demo-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let vins = crate::tools::certs::example_vins(3);
    eprintln!(
        "fleetgate demo: generating dev certificates in {}",
        dir.path().display()
    );
    let pki = DevPki::generate().map_err(|e| e.to_string())?;
    pki.write(dir.path(), &["localhost", "127.0.0.1"], &vins, false)
        .map_err(|e| e.to_string())?;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let config_json = json!({
        "host": "127.0.0.1", "port": 0, "log_level": "warn", "namespace": "demo",
        "tls": {"ca_file": "ca.pem", "server_cert": "server.pem", "server_key": "server.key"},
        "monitoring": {"prometheus_metrics_port": 0, "prometheus_metrics_host": "127.0.0.1"},
        "records": {"V": ["logger"], "alerts": ["logger"], "errors": ["logger"], "connectivity": ["logger"]},
        "fleetgate": {
            "admin": {"listen": "127.0.0.1:0", "token": token},
            "logger_file": "records.jsonl",
            "data_dir": "data"
        }
    });
    let config_path = dir.path().join("demo.json");
    std::fs::write(
        &config_path,
        serde_json::to_vec_pretty(&config_json).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    let loaded: LoadedConfig = Config::load(&config_path).map_err(|e| e.to_string())?;
    crate::logging::init(
        &loaded.config,
        crate::logging::LogFormat::of(&loaded.config),
    );

    let printer = Arc::new(EventPrinter {
        json: json_output,
        counts: Mutex::new(BTreeMap::new()),
        site_names: [
            ("cafe-congress", "Cafe Congress"),
            ("sc-congress", "Supercharger Congress"),
            ("market-east", "East Market"),
        ]
        .into_iter()
        .collect(),
    });
    let shutdown = CancellationToken::new();
    let options = crate::app::StartOptions {
        insecure_admin: false,
        event_tap: Some(printer.clone()),
    };
    let (addrs, server) = crate::app::start(&loaded, options, shutdown.clone())
        .await
        .map_err(|e| e.to_string())?;
    let server = tokio::spawn(server);
    let admin = addrs.admin.ok_or("admin listener missing")?;
    eprintln!("fleetgate demo: server on {} (mTLS), admin API on http://{admin} — one-time token: {token}", addrs.vehicles);
    if let Some(m) = addrs.metrics {
        eprintln!(
            "fleetgate demo: metrics on http://{m}/metrics; records are written to {}",
            dir.path().join("records.jsonl").display()
        );
    }

    // sites and a watch, through the admin API
    let (c, s, m) = (CAFE, CHARGER, MARKET);
    let sites = [
        (
            "cafe-congress",
            json!({"name": "Cafe Congress", "kind": "merchant", "radius_m": 250, "geometry": {"type": "Point", "coordinates": [c.1, c.0]}}),
        ),
        (
            "sc-congress",
            json!({"name": "Supercharger Congress", "kind": "charger", "radius_m": 60, "geometry": {"type": "Point", "coordinates": [s.1, s.0]}}),
        ),
        (
            "market-east",
            json!({"name": "East Market", "kind": "merchant", "geometry": {"type": "Polygon", "coordinates": [[
            [m.1 - 0.002, m.0 - 0.0015], [m.1 + 0.002, m.0 - 0.0015], [m.1 + 0.002, m.0 + 0.0015], [m.1 - 0.002, m.0 + 0.0015], [m.1 - 0.002, m.0 - 0.0015]]]}}),
        ),
    ];
    for (id, body) in &sites {
        admin_call(
            admin,
            &token,
            "PUT",
            &format!("/v1/sites/{id}"),
            &body.to_string(),
        )
        .await?;
    }
    let now = time::OffsetDateTime::now_utc();
    let expires = (now + time::Duration::hours(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let watch = json!({"watch_id": "order-1001", "vin": vins[0], "site_id": "cafe-congress", "target_soc": 80, "expires_at": expires});
    admin_call(admin, &token, "POST", "/v1/watches", &watch.to_string()).await?;
    eprintln!("fleetgate demo: 3 sites and watch order-1001 ({} → Cafe Congress, charge to 80%) created via the admin API", vins[0]);
    eprintln!("fleetgate demo: 3 vehicles driving; events:\n");

    let clock = now.unix_timestamp();
    let scripts: Vec<(SimVehicle, Vec<Step>)> = vec![
        (
            SimVehicle::new(&vins[0], c.0 + 0.0225, c.1, 62.0, clock),
            vec![
                Step::Drive {
                    to: c,
                    kmh: 45.0,
                    dest: Some(c),
                },
                Step::Drive {
                    to: s,
                    kmh: 10.0,
                    dest: None,
                },
                Step::Charge {
                    kw: 150.0,
                    until_soc: 80.0,
                },
                Step::State(Dcs::DetailedChargeStateComplete),
                Step::State(Dcs::DetailedChargeStateDisconnected),
                Step::Drive {
                    to: (c.0 + 0.015, c.1),
                    kmh: 40.0,
                    dest: None,
                },
            ],
        ),
        (
            SimVehicle::new(&vins[1], m.0, m.1 + 0.03, 71.0, clock),
            vec![
                Step::Drive {
                    to: m,
                    kmh: 50.0,
                    dest: Some(m),
                },
                Step::Park { secs: 300 },
                Step::Park { secs: 300 },
                Step::Drive {
                    to: (m.0 - 0.02, m.1),
                    kmh: 50.0,
                    dest: None,
                },
            ],
        ),
        (
            SimVehicle::new(&vins[2], s.0 - 0.02, s.1, 38.0, clock),
            vec![
                Step::Drive {
                    to: s,
                    kmh: 40.0,
                    dest: Some(s),
                },
                Step::Charge {
                    kw: 120.0,
                    until_soc: 55.0,
                },
                Step::State(Dcs::DetailedChargeStateStopped),
            ],
        ),
    ];
    let ctx = Arc::new(DemoCtx {
        addr: addrs.vehicles.to_string(),
        ca_pem: pki.root.cert_pem.clone(),
        pace,
        totals: Totals {
            frames: AtomicU64::new(0),
            acks: AtomicU64::new(0),
        },
        stop: CancellationToken::new(),
    });
    let mut tasks = Vec::new();
    for (v, script) in scripts {
        let pair = pki.vehicle(&v.vin).map_err(|e| e.to_string())?;
        tasks.push(tokio::spawn(run_vehicle(ctx.clone(), pair, v, script)));
    }
    let stop = ctx.stop.clone();
    let totals = &ctx.totals;
    let ctrl_c = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("\nfleetgate demo: interrupted");
        ctrl_c.cancel();
    });
    let mut failures = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(e.to_string()),
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();
    let _ = server.await;

    let counts = printer
        .counts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    // with --json, stdout carries only JSON lines (the events); the summary goes to stderr
    let summary = render_summary(
        totals.frames.load(Ordering::Relaxed),
        totals.acks.load(Ordering::Relaxed),
        &counts,
    );
    if json_output {
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
    if !failures.is_empty() {
        return Err(format!("vehicle errors: {}", failures.join("; ")));
    }
    Ok(())
}

/// The closing summary table.
fn render_summary(frames: u64, acks: u64, counts: &BTreeMap<&'static str, u64>) -> String {
    use std::fmt::Write;
    let mut out = String::from("\n  summary\n");
    let mut row = |label: &str, n: u64| {
        let _ = writeln!(out, "  {label:<36} {n:>8}");
    };
    row("vehicles", 3);
    row("frames sent", frames);
    row("acks received", acks);
    for (kind, n) in counts {
        row(kind, *n);
    }
    row("events total", counts.values().sum::<u64>());
    out
}
