//! `fleetgate bench`: the load bench SREs size fleetgate with. A fleet of mTLS websocket
//! vehicles ([`load`]), the bare ack server it is compared with ([`bare`]), `/proc` sampling of a
//! server by pid ([`procstat`]), the scenarios that run both side by side ([`scenario`]), the
//! frame → event latency reader ([`events`]) and the socket-free drive through the pipeline that
//! `benches/pipeline.rs` and `tests/frame_allocations.rs` share ([`drive`]).

pub mod bare;
pub mod drive;
pub mod events;
pub mod load;
pub mod procstat;
pub mod scenario;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use load::{ConnectStats, Fleet, FleetOptions, StreamStats};

/// Options of `bench load`: one load run against a server that is already running.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The vehicle listener.
    pub target: SocketAddr,
    /// TLS server name.
    pub server_name: String,
    /// Dev PKI folder whose CA the server trusts.
    pub pki: PathBuf,
    /// Vehicles.
    pub vehicles: usize,
    /// New connections per second (0 = as fast as `concurrency` allows).
    pub ramp_per_s: f64,
    /// Handshakes in flight.
    pub concurrency: usize,
    /// Frames per second per vehicle (0 = idle connections).
    pub rate_hz: f64,
    /// Warm-up seconds before measuring.
    pub warmup_s: u64,
    /// Measured seconds.
    pub duration_s: u64,
    /// Loopback source addresses.
    pub sources: u8,
    /// Server process to sample from `/proc`.
    pub server_pid: Option<i32>,
    /// After streaming, drop every connection and reconnect all at once.
    pub storm: bool,
}

/// Result of `bench load`.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Connect phase.
    pub connect: ConnectStats,
    /// Server RSS before connecting and with every connection open.
    pub server_rss_bytes: Option<(u64, u64)>,
    /// Streaming phase (when `rate_hz` > 0).
    pub stream: Option<StreamStats>,
    /// Reconnect storm (when asked for).
    pub storm: Option<ConnectStats>,
}

/// Runs `bench load`.
pub async fn run_load(opts: LoadOptions) -> Result<LoadReport, String> {
    let before = opts
        .server_pid
        .map(|pid| procstat::sample(Some(pid)))
        .transpose()?;
    let mut fleet = Fleet::prepare(FleetOptions {
        target: opts.target,
        server_name: opts.server_name.clone(),
        pki: opts.pki.clone(),
        vehicles: opts.vehicles,
        sources: opts.sources,
        area: scenario::AREA,
    })?;
    let connect = fleet.connect_all(opts.ramp_per_s, opts.concurrency).await;
    fleet.hold(Duration::from_secs(2)).await;
    let after = opts
        .server_pid
        .map(|pid| procstat::sample(Some(pid)))
        .transpose()?;
    let stream = if opts.rate_hz > 0.0 {
        Some(
            fleet
                .stream(
                    opts.rate_hz,
                    Duration::from_secs(opts.warmup_s),
                    Duration::from_secs(opts.duration_s),
                    opts.server_pid,
                )
                .await,
        )
    } else {
        fleet.hold(Duration::from_secs(opts.duration_s)).await;
        None
    };
    let storm = if opts.storm {
        Some(fleet.storm(opts.concurrency).await)
    } else {
        None
    };
    Ok(LoadReport {
        connect,
        server_rss_bytes: before.zip(after).map(|(b, a)| (b.rss_bytes, a.rss_bytes)),
        stream,
        storm,
    })
}

/// `bench load`'s report as a human table.
pub fn load_table(r: &LoadReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let c = &r.connect;
    let _ = writeln!(
        out,
        "connections   {} established / {} attempted, {:.0} handshakes/s, connect p50 {:.1} ms p99 {:.1} ms",
        c.established, c.attempted, c.handshakes_per_s, c.connect_latency.p50_ms, c.connect_latency.p99_ms
    );
    for (reason, n) in &c.failed {
        let example = c.failure_examples.get(reason).cloned().unwrap_or_default();
        let _ = writeln!(out, "  failed       {n} × {reason} (e.g. {example})");
    }
    if let Some((before, after)) = r.server_rss_bytes {
        let _ = writeln!(
            out,
            "server RSS    {:.1} MiB → {:.1} MiB: {:.1} KiB per connection",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            (after as f64 - before as f64) / c.established.max(1) as f64 / 1024.0
        );
    }
    if let Some(s) = &r.stream {
        let _ = writeln!(
            out,
            "frames        {:.0}/s offered, {:.0}/s sent, {:.0}/s acked, {} errors, {} unacked, {} closed ({:.0} s window)",
            s.offered_per_s, s.sent_per_s, s.acked_per_s, s.errors, s.unacked_at_end, s.closed, s.window_s
        );
        let l = &s.ack_latency;
        let _ = writeln!(
            out,
            "ack latency   p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms ({} samples)",
            l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
        );
        if let (Some(cpu), Some(per)) = (s.server_cpu_s, s.server_cpu_us_per_frame) {
            let _ = writeln!(
                out,
                "server CPU    {cpu:.2} s = {per:.1} µs per acked frame (kernel {:.1} µs); RSS {:.1} MiB",
                s.server_system_us_per_frame.unwrap_or(0.0),
                s.server_rss_bytes.unwrap_or(0) as f64 / 1048576.0
            );
        }
        let _ = writeln!(out, "client CPU    {:.2} s", s.client_cpu_s);
    }
    if let Some(s) = &r.storm {
        let _ = writeln!(
            out,
            "storm         {} / {} reconnected in {:.1} s: {:.0} handshakes/s, failed {:?}",
            s.established, s.attempted, s.seconds, s.handshakes_per_s, s.failed
        );
    }
    out
}
