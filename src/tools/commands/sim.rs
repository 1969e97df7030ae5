//! `fleetgate sim`: N simulated vehicles, each with its own certificate (CN = VIN), streaming
//! realistic `V` frames at a rate over real mTLS websockets, verifying every ack by txid; a
//! progress bar and a summary (frames, acks, errors, ack latency p50/p99).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::tools::certs::{DevPki, PemPair};
use crate::tools::sim::{stream_pipelined, SimVehicle, StreamStats};
use crate::wire::EnvelopeWriter;

/// Options of `sim`.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// `host:port` or `wss://host:port/`.
    pub server: String,
    /// A dev PKI folder (`certs dev --out`): its CA signs vehicle certificates, cached there.
    pub certs: PathBuf,
    /// Vehicles.
    pub vehicles: usize,
    /// Frames per second per vehicle.
    pub rate_hz: f64,
    /// Seconds to stream.
    pub duration_s: u64,
    /// Optional GeoJSON LineString (or a FeatureCollection holding one) to drive along.
    pub route: Option<PathBuf>,
}

/// The result of a run.
#[derive(Debug, Clone, Default)]
pub struct SimSummary {
    /// Vehicles that connected.
    pub connected: usize,
    /// Vehicles that failed to connect, with the first reason.
    pub failed: Vec<String>,
    /// Frames sent.
    pub sent: u64,
    /// Frames acked.
    pub acked: u64,
    /// Error replies.
    pub errors: u64,
    /// Ack latency percentiles (ms): p50, p99, max.
    pub latency_ms: (f64, f64, f64),
}

/// Loads the vehicle's certificate from `certs/vehicles/VIN.pem`, or makes and caches one.
pub fn vehicle_cert(certs: &Path, pki: &mut Option<DevPki>, vin: &str) -> Result<PemPair, String> {
    let dir = certs.join(crate::tools::certs::files::VEHICLES);
    let (chain, key) = (
        dir.join(format!("{vin}.pem")),
        dir.join(format!("{vin}.key")),
    );
    if let (Ok(chain_pem), Ok(key_pem)) = (
        std::fs::read_to_string(&chain),
        std::fs::read_to_string(&key),
    ) {
        return Ok(PemPair { chain_pem, key_pem });
    }
    if pki.is_none() {
        *pki = Some(DevPki::load(certs).map_err(|e| e.to_string())?);
    }
    let pair = pki
        .as_ref()
        .expect("loaded above")
        .vehicle(vin)
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (path, text) in [(&chain, &pair.chain_pem), (&key, &pair.key_pem)] {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        crate::tools::certs::write(&dir, name, text).map_err(|e| e.to_string())?;
    }
    Ok(pair)
}

fn read_route(path: &Path) -> Result<Vec<(f64, f64)>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--route {}: {e}", path.display()))?;
    let gj: geojson::GeoJson = text
        .parse()
        .map_err(|e| format!("--route {}: {e}", path.display()))?;
    let geometry = match gj {
        geojson::GeoJson::Geometry(g) => Some(g),
        geojson::GeoJson::Feature(f) => f.geometry,
        geojson::GeoJson::FeatureCollection(fc) => fc.features.into_iter().find_map(|f| f.geometry),
    };
    match geometry.map(|g| g.value) {
        Some(geojson::GeometryValue::LineString { coordinates }) if coordinates.len() >= 2 => {
            Ok(coordinates.iter().map(|c| (c[1], c[0])).collect())
        }
        _ => Err(format!(
            "--route {}: expected a GeoJSON LineString with at least 2 positions",
            path.display()
        )),
    }
}

fn host_port(server: &str) -> (String, String) {
    let s = server
        .trim_start_matches("wss://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let host = s
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(s)
        .trim_matches(['[', ']'])
        .to_owned();
    let addr = if s.contains(':') {
        s.to_owned()
    } else {
        format!("{s}:443")
    };
    (addr, host)
}

/// Runs the simulation.
pub async fn run(opts: SimOptions, show_progress: bool) -> Result<SimSummary, String> {
    let (addr, host) = host_port(&opts.server);
    let ca_pem = std::fs::read_to_string(opts.certs.join(crate::tools::certs::files::CA))
        .map_err(|e| format!("--certs {}: cannot read ca.pem: {e} (make one with `fleetgate certs dev --out DIR`)", opts.certs.display()))?;
    let route = opts.route.as_deref().map(read_route).transpose()?;
    let interval = Duration::from_secs_f64(1.0 / opts.rate_hz.max(0.001));
    let until = Instant::now() + Duration::from_secs(opts.duration_s);
    let mut pki = None;
    let bar = if show_progress {
        let bar = ProgressBar::new(opts.duration_s);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len}s {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let vins = crate::tools::certs::example_vins(opts.vehicles);
    let streaming = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for (i, vin) in vins.iter().enumerate() {
        let pair = vehicle_cert(&opts.certs, &mut pki, vin)?;
        let config =
            crate::tools::client::client_config_from_pem(&ca_pem, &pair.chain_pem, &pair.key_pem)
                .map_err(|e| e.to_string())?;
        let (addr, host, route, vin) = (addr.clone(), host.clone(), route.clone(), vin.clone());
        let streaming = streaming.clone();
        tasks.push(tokio::spawn(async move {
            let ws = crate::tools::client::connect(
                &addr,
                &host,
                config,
                &[("Version", "sim"), ("X-Network-Interface", "wifi")],
            )
            .await
            .map_err(|e| format!("{vin}: {e}"))?;
            streaming.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // spread vehicles around Austin, or along the route with staggered starts
            let start = route.as_ref().map(|r| r[i % r.len()]).unwrap_or((
                30.2672 + (i % 50) as f64 * 0.002,
                -97.7431 + (i / 50) as f64 * 0.002,
            ));
            let mut v = SimVehicle::new(&vin, start.0, start.1, 50.0 + (i % 40) as f64, now);
            let mut writer = EnvelopeWriter::new();
            let mut waypoint = i;
            let mut rng = (i as u64 + 1).wrapping_mul(0x9e3779b97f4a7c15);
            let step_s = interval.as_secs_f64().ceil().max(1.0) as i64;
            let stats = stream_pipelined(ws, interval, until, Duration::from_secs(10), move || {
                match &route {
                    Some(r) => {
                        if v.drive_toward(r[waypoint % r.len()], 50.0, step_s) {
                            waypoint += 1;
                        }
                    }
                    None => {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let jitter = ((rng >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.002;
                        let target = (v.lat + jitter, v.lon + 0.0005);
                        v.drive_toward(target, 40.0, step_s);
                    }
                }
                Some(v.frame(&mut writer))
            })
            .await;
            Ok::<StreamStats, String>(stats)
        }));
    }
    let ticker = {
        let bar = bar.clone();
        let (total, vehicles) = (opts.duration_s, opts.vehicles);
        // without a terminal (a log, a pipe, CI): a plain line every quarter of the run, at
        // most every 10 s
        let every = (total / 4).clamp(1, 10);
        tokio::spawn(async move {
            let mut elapsed = 0u64;
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_secs(1)).await;
                elapsed += 1;
                let connected = streaming.load(std::sync::atomic::Ordering::Relaxed);
                bar.set_message(format!("{connected}/{vehicles} vehicles streaming"));
                bar.inc(1);
                if !show_progress && elapsed.is_multiple_of(every) {
                    eprintln!("fleetgate sim: {elapsed}/{total} s, {connected}/{vehicles} vehicles streaming");
                }
            }
        })
    };
    let mut summary = SimSummary::default();
    let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    for t in tasks {
        match t.await {
            Ok(Ok(stats)) => {
                summary.connected += 1;
                summary.sent += stats.sent;
                summary.acked += stats.acked;
                summary.errors += stats.errors;
                for l in stats.latencies_us {
                    let _ = hist.record(l.max(1));
                }
            }
            Ok(Err(e)) => summary.failed.push(e),
            Err(e) => summary.failed.push(e.to_string()),
        }
    }
    ticker.abort();
    bar.finish_and_clear();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    summary.latency_ms = (ms(0.5), ms(0.99), hist.max() as f64 / 1000.0);
    Ok(summary)
}

/// Prints the summary table.
pub fn print_summary(s: &SimSummary) {
    println!("  {:<24} {:>10}", "vehicles connected", s.connected);
    println!("  {:<24} {:>10}", "vehicles failed", s.failed.len());
    println!("  {:<24} {:>10}", "frames sent", s.sent);
    println!("  {:<24} {:>10}", "frames acked", s.acked);
    println!("  {:<24} {:>10}", "error replies", s.errors);
    println!("  {:<24} {:>10.2}", "ack latency p50 (ms)", s.latency_ms.0);
    println!("  {:<24} {:>10.2}", "ack latency p99 (ms)", s.latency_ms.1);
    println!("  {:<24} {:>10.2}", "ack latency max (ms)", s.latency_ms.2);
    for f in s.failed.iter().take(5) {
        println!("  failed: {f}");
    }
}
