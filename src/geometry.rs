//! Geometry on the Earth's surface shared by the vehicle table and the rules.

use geo::{Distance, Haversine, Point};

/// Mean meters per degree of latitude.
pub const M_PER_DEG: f64 = 111_320.0;

/// Great-circle distance in meters.
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    Haversine.distance(Point::new(lon1, lat1), Point::new(lon2, lat2))
}
