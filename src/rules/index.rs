//! The R-tree index over sites. An index is immutable: a change builds a new one and swaps it
//! in atomically ([`SiteRegistry`]), so readers on the hot path never block.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rstar::{RTree, RTreeObject, AABB};

use super::sites::{Shape, Site};
use crate::geometry::{haversine_m, M_PER_DEG};

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

/// What a point test needs of a site, in an array beside the sites: the geofence reads one
/// compact entry per candidate instead of following a pointer to each site (two cache misses
/// per candidate under load, where sites near each other are far apart in memory).
#[derive(Debug, Clone, Copy)]
enum Footprint {
    /// A circle, tested here.
    Circle { lat: f64, lon: f64, radius_m: f64 },
    /// Polygons: the test reads the site's shape.
    Shape,
}

impl Footprint {
    fn of(site: &Site) -> Footprint {
        match site.shape {
            Shape::Circle { lat, lon, radius_m } => Footprint::Circle { lat, lon, radius_m },
            Shape::Polygons(_) => Footprint::Shape,
        }
    }
}

/// An immutable set of sites with its R-tree.
#[derive(Default)]
pub struct SiteIndex {
    sites: Vec<Arc<Site>>,
    /// `footprints[i]` is `sites[i]`'s.
    footprints: Vec<Footprint>,
    by_id: HashMap<String, u32, foldhash::fast::RandomState>,
    tree: RTree<Entry>,
    margin_m: f64,
    /// True when every site's boxes hold every point within the margin of the site (see
    /// [`SiteIndex::quiet_zones`]).
    tight_boxes: bool,
    /// Unique per built index (0 for the empty default), so positions remembered against one
    /// index are never trusted in another.
    generation: u64,
}

/// Source of [`SiteIndex`] generations.
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

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
            tight_boxes: sites.iter().all(|s| has_tight_boxes(s, margin_m)),
            footprints: sites.iter().map(|s| Footprint::of(s)).collect(),
            sites,
            by_id,
            margin_m,
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// This index's generation: positions taken from it are valid exactly while it is current.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The site at `slot`, a position taken from this index.
    pub fn at(&self, slot: u32) -> Option<&Arc<Site>> {
        self.sites.get(slot as usize)
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

    /// The site with `id` and its position, trying `slot` (where it was last seen) before the
    /// id lookup.
    pub fn locate(&self, id: &str, slot: u32) -> Option<(u32, &Arc<Site>)> {
        match self.sites.get(slot as usize) {
            Some(site) if site.id == id => Some((slot, site)),
            _ => {
                let i = *self.by_id.get(id)?;
                Some((i, &self.sites[i as usize]))
            }
        }
    }

    /// Every site.
    pub fn all(&self) -> &[Arc<Site>] {
        &self.sites
    }

    /// [`Site::edge_distance_m`] of the site at `slot` (a position taken from this index): a
    /// circle's from the compact footprints, without reading the site. `None` for a slot this
    /// index does not have.
    pub fn edge_distance_m(&self, slot: u32, lat: f64, lon: f64) -> Option<f64> {
        match self.footprints.get(slot as usize)? {
            Footprint::Circle {
                lat: clat,
                lon: clon,
                radius_m,
            } => Some(haversine_m(lat, lon, *clat, *clon) - radius_m),
            Footprint::Shape => Some(self.sites[slot as usize].edge_distance_m(lat, lon)),
        }
    }

    /// Calls `f` with the position in the index of every site whose grown box holds the point
    /// (each site once).
    pub fn candidates(&self, lat: f64, lon: f64, mut f: impl FnMut(u32)) {
        let mut last = u32::MAX;
        // internal iteration: the walk keeps its state on the stack, where the iterator form
        // allocates once more nodes are open than its inline buffer holds (dense sites)
        let _ = self
            .tree
            .locate_in_envelope_intersecting_int(&AABB::from_point([lon, lat]), |e| {
                // a site has at most two boxes; they never both contain one point except at ±180
                if e.site != last {
                    f(e.site);
                    last = e.site;
                }
                std::ops::ControlFlow::<()>::Continue(())
            });
    }

    /// The margin the boxes were grown by.
    pub fn margin_m(&self) -> f64 {
        self.margin_m
    }

    /// The radius of the quiet zone a full geofence check may leave behind, at most: a vehicle
    /// outside a site's boxes is more than the margin from it, so it cannot enter that site
    /// before moving about that far. `None` when this index cannot promise that: some site's
    /// boxes are not tight (a circle of kilometres or a polygon far from the equator, whose
    /// degree boxes can fall metres short of the margin at their widest) or the margin is too
    /// small to be worth a zone.
    pub fn quiet_zones(&self) -> Option<f64> {
        // a fifth of the margin and 1 m for the boxes' degree approximations, which are
        // centimetres for the tight sites
        let cap = self.margin_m * 0.8 - 1.0;
        (self.tight_boxes && cap >= 5.0).then_some(cap)
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
        let _ = self.tree.locate_in_envelope_intersecting_int(&query, |e| {
            let site = &self.sites[e.site as usize];
            if site.kind == kind {
                let d = site.edge_distance_m(lat, lon).max(0.0);
                if d <= max_m && best.as_ref().is_none_or(|(_, bd)| d < *bd) {
                    best = Some((site.clone(), d));
                }
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        best
    }
}

/// True when `site`'s boxes grown by `margin_m` hold every point within `margin_m` of it up
/// to centimetres: the boxes are made in degrees with one longitude scale per site, exact
/// only for small sites away from the poles.
fn has_tight_boxes(site: &Site, margin_m: f64) -> bool {
    const MAX_REACH_M: f64 = 5_000.0;
    const MAX_ABS_LAT: f64 = 75.0;
    const MAX_SPAN_DEG: f64 = 0.05;
    match &site.shape {
        Shape::Circle { lat, radius_m, .. } => {
            radius_m + margin_m <= MAX_REACH_M && lat.abs() <= MAX_ABS_LAT
        }
        Shape::Polygons(mp) => {
            use geo::BoundingRect;
            mp.bounding_rect().is_some_and(|r| {
                r.width() <= MAX_SPAN_DEG
                    && r.height() <= MAX_SPAN_DEG
                    && r.min().y.abs().max(r.max().y.abs()) <= MAX_ABS_LAT
            })
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::geojson::sites_from_geojson;
    use crate::rules::sites::tests::circle;

    fn hits(index: &SiteIndex, lat: f64, lon: f64) -> Vec<String> {
        let mut v = Vec::new();
        index.candidates(lat, lon, |slot| {
            let s = index.at(slot).unwrap();
            assert_eq!(
                index.edge_distance_m(slot, lat, lon),
                Some(s.edge_distance_m(lat, lon)),
                "the footprint's distance is the site's"
            );
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
}
