//! Sites (circles or polygons) and their R-tree index. The index is immutable: a change builds a
//! new one and swaps it in atomically ([`SiteRegistry`]), so readers on the hot path never block.
//!
//! Geometry: circles test haversine distance; polygons test point-in-polygon in lon/lat degrees
//! (fine for site-sized shapes; a polygon must not cross the antimeridian). Circles near the
//! antimeridian are indexed with two boxes, near a pole with the full longitude range.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use geo::{Contains, Distance, Euclidean, Haversine, MultiPolygon, Point, Polygon};
use rstar::{RTree, RTreeObject, AABB};
use serde::{Deserialize, Serialize};

/// Mean meters per degree of latitude.
const M_PER_DEG: f64 = 111_320.0;
/// Largest circle radius accepted (m).
pub const MAX_RADIUS_M: f64 = 100_000.0;

/// Great-circle distance in meters.
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    Haversine.distance(Point::new(lon1, lat1), Point::new(lon2, lat2))
}

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

fn err(field: &str, problem: impl Into<String>) -> SiteError {
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
    fn boxes(&self, margin_m: f64) -> Vec<AABB<[f64; 2]>> {
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

/// One R-tree entry: a box and the index of its site.
#[derive(Debug, Clone)]
struct Entry {
    bbox: AABB<[f64; 2]>,
    site: u32,
}

impl RTreeObject for Entry {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        self.bbox
    }
}

/// An immutable set of sites with its R-tree.
#[derive(Default)]
pub struct SiteIndex {
    sites: Vec<Arc<Site>>,
    by_id: HashMap<String, u32, foldhash::fast::RandomState>,
    tree: RTree<Entry>,
    margin_m: f64,
}

impl SiteIndex {
    /// Indexes `sites`, with boxes grown by `margin_m` (the exit margin) so exits are found too.
    pub fn build(sites: Vec<Site>, margin_m: f64) -> SiteIndex {
        let sites: Vec<Arc<Site>> = sites.into_iter().map(Arc::new).collect();
        let mut entries = Vec::with_capacity(sites.len());
        let mut by_id =
            HashMap::with_capacity_and_hasher(sites.len(), foldhash::fast::RandomState::default());
        for (i, site) in sites.iter().enumerate() {
            by_id.insert(site.id.clone(), i as u32);
            for bbox in site.boxes(margin_m) {
                entries.push(Entry {
                    bbox,
                    site: i as u32,
                });
            }
        }
        SiteIndex {
            tree: RTree::bulk_load(entries),
            sites,
            by_id,
            margin_m,
        }
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.sites.len()
    }

    /// True when there are no sites.
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// A site by id.
    pub fn get(&self, id: &str) -> Option<&Arc<Site>> {
        self.by_id.get(id).map(|i| &self.sites[*i as usize])
    }

    /// Every site.
    pub fn all(&self) -> &[Arc<Site>] {
        &self.sites
    }

    /// Calls `f` with every site whose grown box holds the point (each site once).
    pub fn candidates(&self, lat: f64, lon: f64, mut f: impl FnMut(&Arc<Site>)) {
        let mut last = u32::MAX;
        for e in self
            .tree
            .locate_in_envelope_intersecting(&AABB::from_point([lon, lat]))
        {
            // a site has at most two boxes; they never both contain one point except at ±180
            if e.site != last {
                f(&self.sites[e.site as usize]);
                last = e.site;
            }
        }
    }

    /// The margin the boxes were grown by.
    pub fn margin_m(&self) -> f64 {
        self.margin_m
    }

    /// The nearest site of `kind` within `max_m` of a point.
    pub fn nearest_of_kind(
        &self,
        lat: f64,
        lon: f64,
        kind: &str,
        max_m: f64,
    ) -> Option<(Arc<Site>, f64)> {
        let dlat = max_m / M_PER_DEG;
        let dlon = max_m / (M_PER_DEG * lat.to_radians().cos().max(0.01));
        let query = AABB::from_corners([lon - dlon, lat - dlat], [lon + dlon, lat + dlat]);
        let mut best: Option<(Arc<Site>, f64)> = None;
        for e in self.tree.locate_in_envelope_intersecting(&query) {
            let site = &self.sites[e.site as usize];
            if site.kind != kind {
                continue;
            }
            let d = site.edge_distance_m(lat, lon).max(0.0);
            if d <= max_m && best.as_ref().is_none_or(|(_, bd)| d < *bd) {
                best = Some((site.clone(), d));
            }
        }
        best
    }
}

/// The current site index, swapped atomically on change.
pub struct SiteRegistry {
    current: ArcSwap<SiteIndex>,
    margin_m: f64,
}

impl SiteRegistry {
    /// A registry with `sites`.
    pub fn new(sites: Vec<Site>, margin_m: f64) -> Self {
        Self {
            current: ArcSwap::from_pointee(SiteIndex::build(sites, margin_m)),
            margin_m,
        }
    }

    /// The current index (cheap; readers never block writers).
    pub fn load(&self) -> Arc<SiteIndex> {
        self.current.load_full()
    }

    /// Replaces every site.
    pub fn replace(&self, sites: Vec<Site>) {
        self.current
            .store(Arc::new(SiteIndex::build(sites, self.margin_m)));
    }

    /// Inserts or replaces one site (rebuilds the index).
    pub fn upsert(&self, site: Site) {
        let mut sites: Vec<Site> = self
            .load()
            .all()
            .iter()
            .map(|s| (**s).clone())
            .filter(|s| s.id != site.id)
            .collect();
        sites.push(site);
        self.replace(sites);
    }

    /// Removes a site; true when it existed.
    pub fn remove(&self, id: &str) -> bool {
        let index = self.load();
        if index.get(id).is_none() {
            return false;
        }
        let sites = index
            .all()
            .iter()
            .filter(|s| s.id != id)
            .map(|s| (**s).clone())
            .collect();
        self.replace(sites);
        true
    }
}

/// GeoJSON `properties` of a site feature.
#[derive(Debug, Default, Deserialize, Serialize)]
struct SiteProperties {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    radius_m: Option<f64>,
    #[serde(default)]
    tags: BTreeMap<String, serde_json::Value>,
}

fn id_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads one GeoJSON Feature as a site (`id` or `properties.id`; Point + `radius_m` is a circle).
pub fn site_from_feature(
    feature: &geojson::Feature,
    default_radius_m: f64,
) -> Result<Site, SiteError> {
    let props: SiteProperties = match &feature.properties {
        Some(p) => serde_json::from_value(serde_json::Value::Object(p.clone()))
            .map_err(|e| err("properties", e.to_string()))?,
        None => SiteProperties::default(),
    };
    let id = match &feature.id {
        Some(geojson::feature::Id::String(s)) => Some(s.clone()),
        Some(geojson::feature::Id::Number(n)) => Some(n.to_string()),
        None => props.id.as_ref().and_then(id_text),
    }
    .ok_or_else(|| err("id", "missing: set the feature's `id` or `properties.id`"))?;
    let geometry = feature
        .geometry
        .as_ref()
        .ok_or_else(|| err("geometry", "missing"))?;
    let shape = match &geometry.value {
        geojson::GeometryValue::Point { coordinates: c } => {
            if c.len() < 2 {
                return Err(err("geometry", "a Point needs [lon, lat]"));
            }
            Shape::Circle {
                lat: c[1],
                lon: c[0],
                radius_m: props.radius_m.unwrap_or(default_radius_m),
            }
        }
        geojson::GeometryValue::Polygon { .. } | geojson::GeometryValue::MultiPolygon { .. } => {
            // every position needs [lon, lat] before conversion (the converter indexes them)
            let positions: Vec<&[f64]> = match &geometry.value {
                geojson::GeometryValue::Polygon { coordinates } => {
                    coordinates.iter().flatten().map(|p| p.as_slice()).collect()
                }
                geojson::GeometryValue::MultiPolygon { coordinates } => coordinates
                    .iter()
                    .flatten()
                    .flatten()
                    .map(|p| p.as_slice())
                    .collect(),
                _ => Vec::new(),
            };
            if positions
                .iter()
                .any(|p| p.len() < 2 || !p[0].is_finite() || !p[1].is_finite())
            {
                return Err(err(
                    "geometry",
                    "every position must be [lon, lat] with finite numbers",
                ));
            }
            let g: geo::Geometry<f64> = geometry
                .clone()
                .try_into()
                .map_err(|e: geojson::Error| err("geometry", e.to_string()))?;
            match g {
                geo::Geometry::Polygon(p) => Shape::Polygons(MultiPolygon::new(vec![p])),
                geo::Geometry::MultiPolygon(mp) => Shape::Polygons(mp),
                _ => return Err(err("geometry", "expected a Polygon or MultiPolygon")),
            }
        }
        _ => {
            return Err(err(
                "geometry",
                "must be a Point (with properties.radius_m) or a Polygon / MultiPolygon",
            ))
        }
    };
    let site = Site {
        name: props.name.unwrap_or_else(|| id.clone()),
        id,
        kind: props.kind.unwrap_or_else(|| "site".into()),
        tags: props
            .tags
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect(),
        shape,
    };
    site.validate()?;
    Ok(site)
}

/// Reads a FeatureCollection; all or nothing: every bad feature is reported with its index.
pub fn sites_from_geojson(
    text: &str,
    default_radius_m: f64,
) -> Result<Vec<Site>, Vec<(usize, SiteError)>> {
    let fc: geojson::FeatureCollection = text
        .parse::<geojson::GeoJson>()
        .map_err(|e| vec![(0, err("geojson", e.to_string()))])
        .and_then(|g| {
            geojson::FeatureCollection::try_from(g).map_err(|e| {
                vec![(
                    0,
                    err("geojson", format!("expected a FeatureCollection: {e}")),
                )]
            })
        })?;
    let mut sites = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, f) in fc.features.iter().enumerate() {
        match site_from_feature(f, default_radius_m) {
            Ok(s) if !seen.insert(s.id.clone()) => {
                errors.push((i, err("id", format!("duplicate id `{}`", s.id))))
            }
            Ok(s) => sites.push(s),
            Err(e) => errors.push((i, e)),
        }
    }
    if errors.is_empty() {
        Ok(sites)
    } else {
        Err(errors)
    }
}

/// A site as a GeoJSON Feature (circles as Points with `radius_m`).
pub fn site_to_feature(site: &Site) -> geojson::Feature {
    let geometry = match &site.shape {
        Shape::Circle { lat, lon, .. } => {
            geojson::Geometry::new(geojson::GeometryValue::new_point([*lon, *lat]))
        }
        Shape::Polygons(mp) => {
            if mp.0.len() == 1 {
                geojson::Geometry::from(&mp.0[0])
            } else {
                geojson::Geometry::from(mp)
            }
        }
    };
    let mut props = serde_json::Map::new();
    props.insert("name".into(), site.name.clone().into());
    props.insert("kind".into(), site.kind.clone().into());
    if let Shape::Circle { radius_m, .. } = site.shape {
        props.insert("radius_m".into(), radius_m.into());
    }
    props.insert(
        "tags".into(),
        serde_json::to_value(&site.tags).unwrap_or_default(),
    );
    geojson::Feature {
        bbox: None,
        geometry: Some(geometry),
        id: Some(geojson::feature::Id::String(site.id.clone())),
        properties: Some(props),
        foreign_members: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circle(id: &str, lat: f64, lon: f64, r: f64) -> Site {
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

    fn hits(index: &SiteIndex, lat: f64, lon: f64) -> Vec<String> {
        let mut v = Vec::new();
        index.candidates(lat, lon, |s| {
            if s.edge_distance_m(lat, lon) <= 0.0 {
                v.push(s.id.clone())
            }
        });
        v.sort();
        v
    }

    #[test]
    fn circles_across_the_antimeridian_and_near_a_pole() {
        let index = SiteIndex::build(
            vec![
                circle("fiji", -17.0, 179.999, 500.0),
                circle("pole", 89.99, 0.0, 2000.0),
            ],
            50.0,
        );
        assert_eq!(hits(&index, -17.0, -179.999), vec!["fiji"]);
        assert_eq!(hits(&index, -17.0, 179.998), vec!["fiji"]);
        assert_eq!(hits(&index, 89.995, 135.0), vec!["pole"]);
        assert!(hits(&index, -17.0, 178.0).is_empty());
    }

    #[test]
    fn polygon_with_a_hole() {
        let text = r#"{"type":"FeatureCollection","features":[{"type":"Feature","id":"mall","properties":{"kind":"merchant"},
          "geometry":{"type":"Polygon","coordinates":[[[0,0],[0.01,0],[0.01,0.01],[0,0.01],[0,0]],[[0.004,0.004],[0.006,0.004],[0.006,0.006],[0.004,0.006],[0.004,0.004]]]}}]}"#;
        let sites = sites_from_geojson(text, 250.0).unwrap();
        let index = SiteIndex::build(sites, 50.0);
        assert_eq!(hits(&index, 0.002, 0.002), vec!["mall"]);
        assert!(hits(&index, 0.005, 0.005).is_empty(), "inside the hole");
        assert!(hits(&index, 0.02, 0.02).is_empty());
    }

    #[test]
    fn bad_features_are_all_reported() {
        let text = r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","id":"ok","properties":{},"geometry":{"type":"Point","coordinates":[10,10]}},
          {"type":"Feature","properties":{},"geometry":{"type":"Point","coordinates":[10,10]}},
          {"type":"Feature","id":"far","properties":{"radius_m":-5},"geometry":{"type":"Point","coordinates":[10,10]}},
          {"type":"Feature","id":"lat","properties":{},"geometry":{"type":"Point","coordinates":[10,95]}},
          {"type":"Feature","id":"bow","properties":{},"geometry":{"type":"Polygon","coordinates":[[[0,0],[1,1],[1,0],[0,1],[0,0]]]}}]}"#;
        let errors = sites_from_geojson(text, 250.0).unwrap_err();
        let idx: Vec<usize> = errors.iter().map(|e| e.0).collect();
        assert_eq!(idx, vec![1, 2, 3, 4], "{errors:?}");
    }

    #[test]
    fn fuzz_regression_a_position_with_one_number_is_an_error_not_a_panic() {
        let text = include_str!("../../testdata/fuzz-regressions-geojson-short-position.json");
        let errors = sites_from_geojson(text, 250.0).unwrap_err();
        assert_eq!(errors[0].0, 0);
        assert!(errors[0].1.problem.contains("[lon, lat]"), "{errors:?}");
    }

    #[test]
    fn geojson_round_trip() {
        let s = circle("c1", 30.0, -97.0, 120.0);
        let f = site_to_feature(&s);
        assert_eq!(
            site_from_feature(&f, 250.0).unwrap(),
            Site {
                name: "c1".into(),
                ..s
            }
        );
    }
}
