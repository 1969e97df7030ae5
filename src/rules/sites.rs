//! Sites: a circle (center + radius) or polygons, with an id, a name, a kind and tags; their
//! validation and the geometry the rules need (distance to the edge, bounding boxes for the
//! index). The R-tree over them is in [`super::index`], their GeoJSON form in [`super::geojson`].
//!
//! Geometry: circles test haversine distance; polygons test point-in-polygon in lon/lat degrees
//! (fine for site-sized shapes; a polygon must not cross the antimeridian). Circles near the
//! antimeridian get two boxes, near a pole the full longitude range.

use std::collections::BTreeMap;

use geo::{Contains, Distance, Euclidean, MultiPolygon, Point, Polygon};
use rstar::AABB;

use crate::geometry::{haversine_m, M_PER_DEG};

/// Largest circle radius accepted (m).
pub const MAX_RADIUS_M: f64 = 100_000.0;

/// The shape of a site.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// Center and radius.
    Circle {
        /// Latitude of the center.
        lat: f64,
        /// Longitude of the center.
        lon: f64,
        /// Radius (m).
        radius_m: f64,
    },
    /// One or more polygons (with holes), lon/lat degrees.
    Polygons(MultiPolygon<f64>),
}

/// A place vehicles arrive at.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// Stable id chosen by the owner.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `merchant`, `charger`, …
    pub kind: String,
    /// Free-form tags.
    pub tags: BTreeMap<String, String>,
    /// The geometry.
    pub shape: Shape,
}

/// Why a site is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SiteError {
    /// Which field.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

pub(super) fn err(field: &str, problem: impl Into<String>) -> SiteError {
    SiteError {
        field: field.into(),
        problem: problem.into(),
    }
}

fn check_coord(field: &str, lat: f64, lon: f64) -> Result<(), SiteError> {
    if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
        return Err(err(
            field,
            format!("latitude {lat} is not within [-90, 90]"),
        ));
    }
    if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
        return Err(err(
            field,
            format!("longitude {lon} is not within [-180, 180]"),
        ));
    }
    Ok(())
}

impl Site {
    /// Checks ids, coordinates, radius and polygon validity (closed rings, no self-intersection).
    pub fn validate(&self) -> Result<(), SiteError> {
        if self.id.trim().is_empty() || self.id.len() > 200 {
            return Err(err("id", "must be 1 to 200 characters"));
        }
        match &self.shape {
            Shape::Circle { lat, lon, radius_m } => {
                check_coord("geometry", *lat, *lon)?;
                if !radius_m.is_finite() || *radius_m <= 0.0 || *radius_m > MAX_RADIUS_M {
                    return Err(err(
                        "radius_m",
                        format!("must be > 0 and <= {MAX_RADIUS_M}"),
                    ));
                }
            }
            Shape::Polygons(mp) => {
                if mp.0.is_empty() {
                    return Err(err("geometry", "polygon has no rings"));
                }
                for poly in &mp.0 {
                    for ring in std::iter::once(poly.exterior()).chain(poly.interiors()) {
                        if ring.0.len() < 4 {
                            return Err(err(
                                "geometry",
                                "a ring needs at least 4 positions (closed)",
                            ));
                        }
                        for c in &ring.0 {
                            check_coord("geometry", c.y, c.x)?;
                        }
                    }
                    let span = poly
                        .exterior()
                        .0
                        .iter()
                        .map(|c| c.x)
                        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
                    if span.1 - span.0 > 180.0 {
                        return Err(err(
                            "geometry",
                            "polygons crossing the antimeridian are not supported: split it in two",
                        ));
                    }
                }
                use geo::Validation;
                if let Err(e) = mp.check_validation() {
                    return Err(err("geometry", format!("invalid polygon: {e}")));
                }
            }
        }
        Ok(())
    }

    /// Distance from the site's edge (m): negative or zero inside, positive outside. For
    /// polygons outside, an approximation good to a few percent at site scale.
    pub fn edge_distance_m(&self, lat: f64, lon: f64) -> f64 {
        match &self.shape {
            Shape::Circle {
                lat: clat,
                lon: clon,
                radius_m,
            } => haversine_m(lat, lon, *clat, *clon) - radius_m,
            Shape::Polygons(mp) => {
                let p = Point::new(lon, lat);
                if mp.contains(&p) {
                    return 0.0;
                }
                let deg =
                    mp.0.iter()
                        .map(|poly: &Polygon<f64>| Euclidean.distance(&p, poly))
                        .fold(f64::INFINITY, f64::min);
                // lon degrees are shorter than lat degrees: use the shorter scale (conservative)
                deg * M_PER_DEG * lat.to_radians().cos().max(0.01)
            }
        }
    }

    /// A representative point (center, or the first vertex's polygon centroid).
    pub fn center(&self) -> (f64, f64) {
        match &self.shape {
            Shape::Circle { lat, lon, .. } => (*lat, *lon),
            Shape::Polygons(mp) => {
                use geo::Centroid;
                mp.centroid().map(|c| (c.y(), c.x())).unwrap_or((0.0, 0.0))
            }
        }
    }

    /// Bounding boxes in (lon, lat), grown by `margin_m` (two boxes across the antimeridian).
    pub(super) fn boxes(&self, margin_m: f64) -> Vec<AABB<[f64; 2]>> {
        let (min_lon, min_lat, max_lon, max_lat) = match &self.shape {
            Shape::Circle { lat, lon, radius_m } => {
                let dlat = (radius_m + margin_m) / M_PER_DEG;
                let cos = lat.to_radians().cos();
                if lat.abs() + dlat >= 89.9 || cos < 1e-6 {
                    // near a pole every longitude is close
                    return vec![AABB::from_corners(
                        [-180.0, (lat - dlat).max(-90.0)],
                        [180.0, (lat + dlat).min(90.0)],
                    )];
                }
                let dlon = (radius_m + margin_m) / (M_PER_DEG * cos);
                (lon - dlon, lat - dlat, lon + dlon, lat + dlat)
            }
            Shape::Polygons(mp) => {
                use geo::BoundingRect;
                let Some(r) = mp.bounding_rect() else {
                    return Vec::new();
                };
                let dlat = margin_m / M_PER_DEG;
                let dlon = margin_m
                    / (M_PER_DEG
                        * r.min()
                            .y
                            .abs()
                            .max(r.max().y.abs())
                            .to_radians()
                            .cos()
                            .max(0.01));
                (
                    r.min().x - dlon,
                    r.min().y - dlat,
                    r.max().x + dlon,
                    r.max().y + dlat,
                )
            }
        };
        let (min_lat, max_lat) = (min_lat.max(-90.0), max_lat.min(90.0));
        if max_lon - min_lon >= 360.0 {
            return vec![AABB::from_corners([-180.0, min_lat], [180.0, max_lat])];
        }
        let mut out = Vec::with_capacity(2);
        if min_lon < -180.0 {
            out.push(AABB::from_corners(
                [min_lon + 360.0, min_lat],
                [180.0, max_lat],
            ));
            out.push(AABB::from_corners([-180.0, min_lat], [max_lon, max_lat]));
        } else if max_lon > 180.0 {
            out.push(AABB::from_corners([min_lon, min_lat], [180.0, max_lat]));
            out.push(AABB::from_corners(
                [-180.0, min_lat],
                [max_lon - 360.0, max_lat],
            ));
        } else {
            out.push(AABB::from_corners([min_lon, min_lat], [max_lon, max_lat]));
        }
        out
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A circle site for tests.
    pub fn circle(id: &str, lat: f64, lon: f64, r: f64) -> Site {
        Site {
            id: id.into(),
            name: id.into(),
            kind: "merchant".into(),
            tags: Default::default(),
            shape: Shape::Circle {
                lat,
                lon,
                radius_m: r,
            },
        }
    }
}
