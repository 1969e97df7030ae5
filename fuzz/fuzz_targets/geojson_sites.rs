//! GeoJSON site import, indexing and point queries on arbitrary text.
#![no_main]
use fleetgate::rules::geojson::sites_from_geojson;
use fleetgate::rules::index::SiteIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(sites) = sites_from_geojson(text, 250.0) {
        let index = SiteIndex::build(sites, 50.0);
        for (lat, lon) in [(0.0, 0.0), (30.2672, -97.7431), (89.99, 179.99), (-89.99, -180.0)] {
            index.candidates(lat, lon, |slot| {
                let _ = index.edge_distance_m(slot, lat, lon);
            });
            let _ = index.quiet_zones();
            let _ = index.nearest_of_kind(lat, lon, "charger", 500.0);
        }
    }
});
