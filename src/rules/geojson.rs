//! The GeoJSON form of sites (file import, admin import and export): a Feature whose `id` (or
//! `properties.id`) is the site id; a circle is a Point with `properties.radius_m`; polygons
//! are Polygon / MultiPolygon; `properties.name`, `.kind`, `.tags`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use geo::MultiPolygon;

use super::sites::{err, Shape, Site, SiteError};

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
    use crate::rules::sites::tests::circle;

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
