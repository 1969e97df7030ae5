//! Rules per `V` frame (state update + geofence + charging + watches) with 10 k, 100 k and
//! 1 M circle sites indexed. Goal: <= 2 µs median with 1 M sites.
//! Also prints the memory cost of 1 M sites. Run: `cargo bench --bench rules`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fleetgate::rules::sites::{Shape, Site};
use fleetgate::rules::{Fleet, RulesConfig};
use fleetgate::state::{ChargeState, VehicleUpdate};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Deterministic pseudo-random numbers (xorshift), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Sites spread over the continental US (~1.4 M km²-degrees), 250 m radius.
fn sites(n: usize) -> Vec<Site> {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    (0..n)
        .map(|i| Site {
            id: format!("site-{i}"),
            name: format!("Site {i}"),
            kind: if i % 10 == 0 {
                "charger".into()
            } else {
                "merchant".into()
            },
            tags: Default::default(),
            shape: Shape::Circle {
                lat: 25.0 + rng.next() * 24.0,
                lon: -124.0 + rng.next() * 57.0,
                radius_m: 250.0,
            },
        })
        .collect()
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// One `V` frame's signals of a car driving, not charging, at `location`.
fn driving_frame(at_ms: i64, location: (f64, f64)) -> VehicleUpdate {
    VehicleUpdate {
        at_ms,
        location: Some(location),
        soc: Some(60.0),
        speed: Some(40.0),
        charge_state: Some(ChargeState::Idle),
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("rules");
    for n in [10_000usize, 100_000, 1_000_000] {
        let before = rss_bytes();
        let engine = Fleet::new(RulesConfig::default(), sites(n));
        let after = rss_bytes();
        if n == 1_000_000 {
            eprintln!(
                "memory: 1,000,000 circle sites indexed: {:.0} MiB RSS ({:.0} bytes per site)",
                (after - before) as f64 / 1048576.0,
                (after - before) as f64 / n as f64
            );
        }
        // 1,000 vehicles driving: each frame moves one of them ~15 m
        let vehicles: Vec<String> = (0..1000).map(|i| format!("5YJ3E1EA7KF{i:06}")).collect();
        let mut rng = Rng(42);
        let mut pos: Vec<(f64, f64)> = (0..1000)
            .map(|_| (25.0 + rng.next() * 24.0, -124.0 + rng.next() * 57.0))
            .collect();
        let mut t = 1_764_000_000_000i64;
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("v_frame", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % vehicles.len();
                t += 1;
                let p = &mut pos[i];
                p.0 += (rng.next() - 0.5) * 0.0003;
                p.1 += (rng.next() - 0.5) * 0.0003;
                engine.apply(&vehicles[i], &driving_frame(t, *p))
            })
        });
    }
    group.finish();
}

/// The load bench's rules: 5,000 vehicles driving at 30–60 km/h (one frame a second each,
/// taken in turn) through the steady scenario's 100,000 sites (~10 per km², radii 150–350 m).
/// Each frame finds the vehicle's state and the sites around it cold in the cache, as they
/// are under load: this is where the geofence costs most.
fn bench_dense(c: &mut Criterion) {
    let text = fleetgate::tools::bench::scenario::steady_sites_geojson(100_000).to_string();
    let sites = fleetgate::rules::geojson::sites_from_geojson(&text, 250.0).expect("bench sites");
    let engine = Fleet::new(RulesConfig::default(), sites);
    let (south, west, north, east) = fleetgate::tools::bench::scenario::AREA;
    let n = 5_000;
    let vehicles: Vec<String> = (0..n).map(|i| format!("5YJ3E1EA7KF{i:06}")).collect();
    let mut rng = Rng(7);
    // position and per-second step in degrees (heading fixed, bounced at the area's edges)
    let mut cars: Vec<[f64; 4]> = (0..n)
        .map(|_| {
            let lat = south + rng.next() * (north - south);
            let lon = west + rng.next() * (east - west);
            let heading = rng.next() * std::f64::consts::TAU;
            let m_per_s = (30.0 + rng.next() * 30.0) / 3.6;
            let dlat = m_per_s * heading.cos() / 111_195.0;
            let dlon = m_per_s * heading.sin() / (111_195.0 * lat.to_radians().cos());
            [lat, lon, dlat, dlon]
        })
        .collect();
    let mut t = 1_764_000_000_000i64;
    let mut i = 0usize;
    let mut group = c.benchmark_group("rules_dense");
    group.bench_function("v_frame_5000_vehicles_100k_sites", |b| {
        b.iter(|| {
            i += 1;
            if i == n {
                i = 0;
                t += 1000;
            }
            let car = &mut cars[i];
            if !(south..north).contains(&(car[0] + car[2])) {
                car[2] = -car[2];
            }
            if !(west..east).contains(&(car[1] + car[3])) {
                car[3] = -car[3];
            }
            car[0] += car[2];
            car[1] += car[3];
            engine.apply(&vehicles[i], &driving_frame(t, (car[0], car[1])))
        })
    });
    group.finish();
}

criterion_group!(benches, bench, bench_dense);
criterion_main!(benches);
