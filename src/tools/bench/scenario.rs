//! The bench scenarios: each starts a fresh bare ack server and a fresh fleetgate (child
//! processes of this binary, on loopback), drives the same load at both, samples each server's
//! CPU and memory from `/proc`, and compares the results with the goals.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use super::load::{ConnectStats, Fleet, FleetOptions, StreamStats};
use super::procstat;

/// The scenarios of `fleetgate bench scenario`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Idle connections up to the machine's limit: resident memory per connection.
    IdleMax,
    /// Every vehicle at 1 Hz with decode, table, rules on 100,000 sites and the logger sink:
    /// server CPU per frame and ack latency.
    Steady,
    /// Raise the frame rate until acks fall behind: the largest sustained frames/s.
    Saturate,
    /// Every vehicle drops its connection and reconnects at once: handshakes/s.
    Storm,
    /// fleetgate with reliable acks on a real Kafka broker: ack latency.
    KafkaReliable,
}

/// Which server a run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerKind {
    /// The bare ack server (`bench bare-server`).
    Bare,
    /// fleetgate (`serve`).
    Fleetgate,
}

/// How much of fleetgate's pipeline the streaming scenarios ask for, so the difference to
/// the bare server can be measured stage by stage (`bench scenario steady --pipeline …`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PipelineWork {
    /// The scenario's own configuration: `V` records and events to the logger, the rules on
    /// 100,000 sites.
    #[default]
    Full,
    /// The same without sites: the vehicle table and the logger's line, no geofence.
    NoSites,
    /// `V` routed nowhere (`records` empty): TLS, the connection loop, the envelope and the
    /// payload read, the ack — no vehicle table, no rules, no logger.
    Unrouted,
}

/// Options of `bench scenario`.
#[derive(Debug, Clone)]
pub struct ScenarioOptions {
    /// The scenario.
    pub scenario: Scenario,
    /// Vehicles (default per scenario).
    pub vehicles: Option<usize>,
    /// Measured seconds of streaming phases (default per scenario).
    pub window_s: Option<u64>,
    /// Folder for the PKI, configs, sites and results.
    pub work_dir: PathBuf,
    /// Measure only one server.
    pub only: Option<ServerKind>,
    /// How much of fleetgate's pipeline the streaming scenarios run.
    pub pipeline: PipelineWork,
    /// Kafka bootstrap servers (kafka-reliable).
    pub kafka: String,
    /// Loopback source addresses to use.
    pub sources: u8,
}

/// What one server did under the scenario's load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerRun {
    /// `bare` or `fleetgate`.
    pub server: String,
    /// Resident memory of the fresh process before any connection.
    pub rss_before_bytes: u64,
    /// Resident memory with every connection open and idle.
    pub rss_connected_bytes: u64,
    /// (connected − before) / connections.
    pub rss_per_connection_bytes: f64,
    /// The first connect phase.
    pub connect: ConnectStats,
    /// Streaming phases (one; several steps for `saturate`).
    pub stream: Vec<StreamStats>,
    /// Reconnect storm (`storm`).
    pub storm: Option<ConnectStats>,
    /// Largest acked frames/s with acks keeping up (`saturate`).
    pub max_frames_per_s: Option<f64>,
}

/// One goal of the scenario, checked against the two runs.
#[derive(Debug, Clone, Serialize)]
pub struct GoalCheck {
    /// What is compared.
    pub goal: String,
    /// Bare server's figure.
    pub bare: Option<f64>,
    /// fleetgate's figure.
    pub fleetgate: Option<f64>,
    /// fleetgate / bare, or the absolute figure for absolute goals.
    pub ratio: Option<f64>,
    /// The limit (ratio or absolute).
    pub limit: String,
    /// Met?
    pub met: Option<bool>,
}

/// The whole result of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Which scenario.
    pub scenario: Scenario,
    /// UTC time of the run.
    pub date: String,
    /// Machine facts.
    pub machine: String,
    /// Vehicles.
    pub vehicles: usize,
    /// How much of fleetgate's pipeline ran.
    pub pipeline: PipelineWork,
    /// Per server.
    pub runs: Vec<ServerRun>,
    /// Goals.
    pub goals: Vec<GoalCheck>,
}

/// A server under test: a child process on a loopback port.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    pid: i32,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Starts `exe args…` and waits for the line announcing its vehicle listener.
    /// Starts `command` with its log in `log` (a file, as in production: a pipe the bench
    /// must drain would slow the server down whenever the bench falls behind) and waits for
    /// the line announcing its vehicle listener.
    fn start(what: &str, mut command: Command, log: &Path) -> Result<ServerProcess, String> {
        let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = command
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let addr = text.lines().find_map(|line| {
                line.split_once("listening vehicles=")
                    .map(|(_, rest)| rest)
                    .or_else(|| {
                        line.split_once("bare-ack-server listening ")
                            .map(|(_, r)| r)
                    })
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            });
            if let Some(addr) = addr {
                let pid = child.id() as i32;
                return Ok(ServerProcess { child, addr, pid });
            }
            if let Ok(Some(status)) = child.try_wait() {
                // the process ended before listening: its own words say why
                let early: Vec<&str> = text.lines().take(20).collect();
                return Err(format!(
                    "{what} exited ({status}) before listening:\n{}",
                    early.join("\n")
                ));
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!(
                    "{what} did not announce its listener within 60 s (log: {})",
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Default vehicles per scenario (this machine: 20,000 open files per process).
fn default_vehicles(s: Scenario) -> usize {
    match s {
        Scenario::IdleMax | Scenario::Steady | Scenario::Storm => 19_500,
        Scenario::Saturate => 2_000,
        Scenario::KafkaReliable => 10_000,
    }
}

/// The area bench vehicles and sites share (about 110 × 88 km): south, west, north, east.
pub const AREA: (f64, f64, f64, f64) = (37.0, -122.6, 38.0, -121.6);

/// The sites of the load scenarios as GeoJSON: `n` points spread over [`AREA`] (every tenth a
/// charger), radii 150–350 m, the same every run (`benches/instructions.rs` drives through them
/// too).
pub fn steady_sites_geojson(n: usize) -> serde_json::Value {
    let (south, west, north, east) = AREA;
    let mut features = Vec::with_capacity(n);
    for i in 0..n {
        let fx = (i as f64 * 0.569_840_290_998).fract();
        let fy = (i as f64 * 0.754_877_666_2 + 0.1).fract();
        let kind = if i % 10 == 0 { "charger" } else { "merchant" };
        features.push(serde_json::json!({
            "type": "Feature",
            "id": format!("bench-site-{i}"),
            "properties": {"kind": kind, "radius_m": 150 + (i % 5) * 50},
            "geometry": {"type": "Point", "coordinates": [west + (east - west) * fx, south + (north - south) * fy]},
        }));
    }
    serde_json::json!({"type": "FeatureCollection", "features": features})
}

/// Writes [`steady_sites_geojson`]`(n)` to `path` unless the file exists.
fn ensure_sites(path: &Path, n: usize) -> Result<(), String> {
    if path.is_file() {
        return Ok(());
    }
    let doc = steady_sites_geojson(n);
    std::fs::write(path, serde_json::to_vec(&doc).map_err(|e| e.to_string())?)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Makes the dev PKI in `dir` unless it exists.
fn ensure_pki(dir: &Path) -> Result<(), String> {
    if dir.join(crate::tools::certs::files::CA).is_file() {
        return Ok(());
    }
    let pki = crate::tools::certs::DevPki::generate().map_err(|e| e.to_string())?;
    pki.write(dir, &["localhost", "127.0.0.1"], &[], false)
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn fleetgate_config(opts: &ScenarioOptions, pki: &Path, sites: &Path) -> serde_json::Value {
    let p = |name: &str| pki.join(name).display().to_string();
    let mut config = serde_json::json!({
        "host": "127.0.0.1",
        "port": 0,
        "log_level": "info",
        "namespace": "bench",
        "tls": {
            "ca_file": p(crate::tools::certs::files::CA),
            "server_cert": p(crate::tools::certs::files::SERVER),
            "server_key": p(crate::tools::certs::files::SERVER_KEY),
        },
        "records": {"V": ["logger"]},
        "fleetgate": {
            "limits": {"max_connections": 19_900, "handshakes_per_ip_per_s": 0},
            "logger_file": "/dev/null",
            "events": {"sinks": ["logger"]},
        },
    });
    // the pipeline's rules run on 100,000 sites where frames are measured, unless a stage
    // without them is asked for
    if opts.pipeline == PipelineWork::Full
        && matches!(
            opts.scenario,
            Scenario::Steady | Scenario::Saturate | Scenario::KafkaReliable
        )
    {
        config["fleetgate"]["sites_file"] = sites.display().to_string().into();
    }
    if opts.pipeline == PipelineWork::Unrouted {
        config["records"] = serde_json::json!({});
    }
    if opts.scenario == Scenario::KafkaReliable {
        config["records"] = serde_json::json!({"V": ["kafka"]});
        config["reliable_ack_sources"] = serde_json::json!({"V": "kafka"});
        config["kafka"] = serde_json::json!({"bootstrap.servers": opts.kafka});
        config["fleetgate"]["events"] = serde_json::json!({"sinks": ["kafka"]});
    }
    config
}

fn start_server(
    kind: ServerKind,
    opts: &ScenarioOptions,
    pki: &Path,
    sites: &Path,
) -> Result<ServerProcess, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = Command::new(exe);
    match kind {
        ServerKind::Bare => {
            command
                .args(["bench", "bare-server", "--listen", "127.0.0.1:0", "--pki"])
                .arg(pki);
        }
        ServerKind::Fleetgate => {
            let path = opts.work_dir.join("fleetgate-bench.json");
            let config = fleetgate_config(opts, pki, sites);
            std::fs::write(
                &path,
                serde_json::to_vec_pretty(&config).map_err(|e| e.to_string())?,
            )
            .map_err(|e| format!("{}: {e}", path.display()))?;
            command.arg("serve").arg("--config").arg(&path);
        }
    }
    let log = opts
        .work_dir
        .join(format!("{}-server.log", format!("{kind:?}").to_lowercase()));
    eprintln!("bench: starting {kind:?} server (log: {})", log.display());
    ServerProcess::start(&format!("{kind:?} server"), command, &log)
}

/// Waits (at most 30 s) until the process's RSS stops moving, then samples it.
async fn settled(pid: i32) -> Result<procstat::ProcSample, String> {
    let mut last = procstat::sample(Some(pid))?;
    let mut still = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = procstat::sample(Some(pid))?;
        if now.rss_bytes.abs_diff(last.rss_bytes) < 256 * 1024 {
            still += 1;
            if still >= 4 {
                return Ok(now);
            }
        } else {
            still = 0;
        }
        last = now;
    }
    Ok(last)
}

/// Runs the scenario against one server kind.
async fn run_one(
    kind: ServerKind,
    opts: &ScenarioOptions,
    pki: &Path,
    sites: &Path,
    vehicles: usize,
) -> Result<ServerRun, String> {
    let server = start_server(kind, opts, pki, sites)?;
    // let the fresh process settle (sites index built, start-up garbage returned to the OS)
    let before = settled(server.pid).await?;
    let mut fleet = Fleet::prepare(FleetOptions {
        target: server.addr,
        server_name: "localhost".into(),
        pki: pki.to_owned(),
        vehicles,
        sources: opts.sources,
        area: AREA,
    })?;
    let connect = fleet.connect_all(0.0, 64).await;
    if fleet.connected() == 0 {
        return Err(format!(
            "{kind:?}: no vehicle could connect: {:?}",
            connect.failure_examples
        ));
    }
    fleet.hold(Duration::from_secs(3)).await;
    let connected = settled(server.pid).await?;
    let per_connection =
        (connected.rss_bytes as f64 - before.rss_bytes as f64) / connect.established.max(1) as f64;
    let mut run = ServerRun {
        server: format!("{kind:?}").to_lowercase(),
        rss_before_bytes: before.rss_bytes,
        rss_connected_bytes: connected.rss_bytes,
        rss_per_connection_bytes: per_connection,
        connect,
        ..Default::default()
    };
    eprintln!(
        "bench: {kind:?}: RSS {:.1} MiB before, {:.1} MiB with {} connections: {:.1} KiB per connection",
        before.rss_bytes as f64 / 1048576.0,
        connected.rss_bytes as f64 / 1048576.0,
        run.connect.established,
        per_connection / 1024.0
    );
    let window = |default: u64| Duration::from_secs(opts.window_s.unwrap_or(default));
    match opts.scenario {
        Scenario::IdleMax => {}
        Scenario::Steady | Scenario::KafkaReliable => {
            let stats = fleet
                .stream(1.0, Duration::from_secs(10), window(30), Some(server.pid))
                .await;
            print_stream(kind, &stats);
            run.stream.push(stats);
        }
        Scenario::Saturate => {
            let mut offered = 5_000.0;
            let mut best: f64 = 0.0;
            loop {
                let rate = offered / fleet.connected().max(1) as f64;
                let stats = fleet
                    .stream(rate, Duration::from_secs(3), window(10), Some(server.pid))
                    .await;
                print_stream(kind, &stats);
                let keeping_up = stats.acked_per_s >= 0.97 * stats.offered_per_s
                    && stats.unacked_at_end == 0
                    && stats.ack_latency.p99_ms < 200.0;
                if keeping_up {
                    best = best.max(stats.acked_per_s);
                }
                run.stream.push(stats);
                if !keeping_up || offered > 400_000.0 || fleet.connected() == 0 {
                    break;
                }
                offered *= 1.25;
            }
            run.max_frames_per_s = Some(best);
            eprintln!("bench: {kind:?}: saturation at {best:.0} frames/s");
        }
        Scenario::Storm => {
            let storm = fleet.storm(64).await;
            run.storm = Some(storm);
        }
    }
    drop(fleet);
    drop(server);
    Ok(run)
}

fn print_stream(kind: ServerKind, s: &StreamStats) {
    eprintln!(
        "bench: {kind:?}: offered {:.0}/s sent {:.0}/s acked {:.0}/s, ack p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.1} ms, server CPU {} µs/frame, unacked {}, closed {}",
        s.offered_per_s,
        s.sent_per_s,
        s.acked_per_s,
        s.ack_latency.p50_ms,
        s.ack_latency.p99_ms,
        s.ack_latency.p999_ms,
        s.ack_latency.max_ms,
        s.server_cpu_us_per_frame
            .map(|v| format!("{v:.1}"))
            .unwrap_or_else(|| "?".into()),
        s.unacked_at_end,
        s.closed
    );
}

fn ratio_goal(
    goal: &str,
    bare: Option<f64>,
    fleetgate: Option<f64>,
    limit: f64,
    at_most: bool,
) -> GoalCheck {
    let ratio = match (bare, fleetgate) {
        (Some(b), Some(f)) if b > 0.0 => Some(f / b),
        _ => None,
    };
    GoalCheck {
        goal: goal.into(),
        bare,
        fleetgate,
        ratio,
        limit: format!("{} {limit}× bare", if at_most { "≤" } else { "≥" }),
        met: ratio.map(|r| if at_most { r <= limit } else { r >= limit }),
    }
}

fn goals(scenario: Scenario, runs: &[ServerRun]) -> Vec<GoalCheck> {
    let find = |name: &str| runs.iter().find(|r| r.server == name);
    let (bare, fg) = (find("bare"), find("fleetgate"));
    let stream = |r: Option<&ServerRun>| r.and_then(|r| r.stream.first()).cloned();
    match scenario {
        Scenario::IdleMax => vec![ratio_goal(
            "RSS per idle connection (bytes)",
            bare.map(|r| r.rss_per_connection_bytes),
            fg.map(|r| r.rss_per_connection_bytes),
            1.25,
            true,
        )],
        Scenario::Steady => vec![ratio_goal(
            "server CPU per frame (µs) at 1 Hz per vehicle",
            stream(bare).and_then(|s| s.server_cpu_us_per_frame),
            stream(fg).and_then(|s| s.server_cpu_us_per_frame),
            // the full pipeline (table, rules on 100,000 sites, logger sink) within 1.3× bare
            1.3,
            true,
        )],
        Scenario::Saturate => vec![ratio_goal(
            "saturation (acked frames/s)",
            bare.and_then(|r| r.max_frames_per_s),
            fg.and_then(|r| r.max_frames_per_s),
            0.7,
            false,
        )],
        Scenario::Storm => vec![ratio_goal(
            "reconnect storm (handshakes/s)",
            bare.and_then(|r| r.storm.as_ref())
                .map(|s| s.handshakes_per_s),
            fg.and_then(|r| r.storm.as_ref())
                .map(|s| s.handshakes_per_s),
            0.9,
            false,
        )],
        Scenario::KafkaReliable => {
            let p99 = stream(fg).map(|s| s.ack_latency.p99_ms);
            vec![GoalCheck {
                goal: "ack p99 (ms), reliable acks on a real broker".into(),
                bare: stream(bare).map(|s| s.ack_latency.p99_ms),
                fleetgate: p99,
                ratio: p99,
                limit: "≤ 25 ms".into(),
                met: p99.map(|p| p <= 25.0),
            }]
        }
    }
}

/// Runs a scenario: bare server first, then fleetgate, each a fresh process.
pub async fn run(opts: ScenarioOptions) -> Result<ScenarioReport, String> {
    let mut opts = opts;
    std::fs::create_dir_all(&opts.work_dir)
        .map_err(|e| format!("{}: {e}", opts.work_dir.display()))?;
    // the server's config names files relative to itself: use absolute paths
    opts.work_dir = std::fs::canonicalize(&opts.work_dir)
        .map_err(|e| format!("{}: {e}", opts.work_dir.display()))?;
    let pki = opts.work_dir.join("pki");
    ensure_pki(&pki)?;
    let sites = opts.work_dir.join("sites-100k.geojson");
    ensure_sites(&sites, 100_000)?;
    if opts.scenario == Scenario::KafkaReliable && opts.only != Some(ServerKind::Bare) {
        let probe = opts
            .kafka
            .split(',')
            .next()
            .unwrap_or("")
            .parse::<SocketAddr>()
            .ok()
            .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok());
        if probe.is_none() {
            return Err(format!(
                "no Kafka broker answers at {} — start one with `scripts/kafka.sh start` (or pass --kafka HOST:PORT)",
                opts.kafka
            ));
        }
    }
    let vehicles = opts.vehicles.unwrap_or(default_vehicles(opts.scenario));
    let mut runs = Vec::new();
    for kind in [ServerKind::Bare, ServerKind::Fleetgate] {
        if opts.only.is_some_and(|only| only != kind) {
            continue;
        }
        runs.push(run_one(kind, &opts, &pki, &sites, vehicles).await?);
        // let the closed sockets' TIME_WAIT and the freed memory settle between servers
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let goals = goals(opts.scenario, &runs);
    Ok(ScenarioReport {
        scenario: opts.scenario,
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        machine: machine_facts(),
        vehicles,
        pipeline: opts.pipeline,
        runs,
        goals,
    })
}

fn machine_facts() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    use procfs::Current as _;
    let mem = procfs::Meminfo::current()
        .map(|m| m.mem_total / (1 << 30))
        .unwrap_or(0);
    format!(
        "{cores} cores ({cpu}), {mem} GiB RAM, open-file limit {}",
        procstat::nofile_limit()
    )
}

/// The report as a human table.
pub fn table(report: &ScenarioReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario {:?} — {} vehicles — pipeline {:?} — {} — {}",
        report.scenario, report.vehicles, report.pipeline, report.date, report.machine
    );
    let _ = writeln!(
        out,
        "{:<10} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>10}",
        "server",
        "conn",
        "hs/s",
        "KiB/conn",
        "sent/s",
        "acked/s",
        "µs/frame",
        "kernel µs",
        "p50 ms",
        "p99 ms",
        "p99.9",
        "storm hs/s"
    );
    for r in &report.runs {
        let s = r.stream.last();
        let f =
            |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<10} {:>9} {:>9.0} {:>10.1} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>10}",
            r.server,
            r.connect.established,
            r.connect.handshakes_per_s,
            r.rss_per_connection_bytes / 1024.0,
            f(s.map(|s| s.sent_per_s), 0),
            f(r.max_frames_per_s.or(s.map(|s| s.acked_per_s)), 0),
            f(s.and_then(|s| s.server_cpu_us_per_frame), 1),
            f(s.and_then(|s| s.server_system_us_per_frame), 1),
            f(s.map(|s| s.ack_latency.p50_ms), 2),
            f(s.map(|s| s.ack_latency.p99_ms), 2),
            f(s.map(|s| s.ack_latency.p999_ms), 2),
            f(r.storm.as_ref().map(|s| s.handshakes_per_s), 0),
        );
    }
    for g in &report.goals {
        let f = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "goal: {} — bare {} fleetgate {} → {} (limit {}) {}",
            g.goal,
            f(g.bare),
            f(g.fleetgate),
            f(g.ratio),
            g.limit,
            match g.met {
                Some(true) => "MET",
                Some(false) => "MISSED",
                None => "not measured",
            }
        );
    }
    out
}
