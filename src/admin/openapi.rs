//! The OpenAPI 3.0 document of the admin API, generated from [`ROUTES`]. The black-box tests
//! call every route listed here on the real server (so the table stays true to the router) and
//! parse the document with an OpenAPI model.

use serde_json::{json, Map, Value};

/// One route: method, path, summary, whether it needs the token, success status, and the
/// error statuses it can answer.
pub struct RouteDoc {
    /// HTTP method (lowercase).
    pub method: &'static str,
    /// Path with `{param}`s.
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Needs `Authorization: Bearer`.
    pub auth: bool,
    /// Success status.
    pub ok: u16,
    /// Error statuses.
    pub errors: &'static [u16],
    /// Query parameters.
    pub query: &'static [&'static str],
    /// Request body schema name, if any.
    pub body: Option<&'static str>,
}

#[allow(clippy::too_many_arguments)] // a table row, one argument per column
const fn r(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    auth: bool,
    ok: u16,
    errors: &'static [u16],
    query: &'static [&'static str],
    body: Option<&'static str>,
) -> RouteDoc {
    RouteDoc {
        method,
        path,
        summary,
        auth,
        ok,
        errors,
        query,
        body,
    }
}

/// Routes answering GeoJSON (`application/geo+json`) on success.
const GEOJSON_ROUTES: &[&str] = &["/v1/sites/export"];

/// Every route of the admin API.
pub const ROUTES: &[RouteDoc] = &[
    r(
        "get",
        "/healthz",
        "Process is up",
        false,
        200,
        &[],
        &[],
        None,
    ),
    r(
        "get",
        "/readyz",
        "Vehicle listener bound and sinks (Kafka) reachable",
        false,
        200,
        &[503],
        &[],
        None,
    ),
    r(
        "get",
        "/openapi.json",
        "This document",
        false,
        200,
        &[],
        &[],
        None,
    ),
    r(
        "get",
        "/v1/sites",
        "List sites",
        true,
        200,
        &[401],
        &[],
        None,
    ),
    r(
        "get",
        "/v1/sites/{id}",
        "Get a site",
        true,
        200,
        &[401, 404],
        &[],
        None,
    ),
    r(
        "put",
        "/v1/sites/{id}",
        "Create or replace a site",
        true,
        200,
        &[400, 401, 413, 415, 422, 503, 507],
        &[],
        Some("Site"),
    ),
    r(
        "delete",
        "/v1/sites/{id}",
        "Delete a site",
        true,
        204,
        &[401, 404, 503, 507],
        &[],
        None,
    ),
    r(
        "post",
        "/v1/sites/import",
        "Import a GeoJSON FeatureCollection (all or nothing)",
        true,
        200,
        &[400, 401, 413, 422, 503, 507],
        &[],
        Some("FeatureCollection"),
    ),
    r(
        "get",
        "/v1/sites/export",
        "Export every site as a GeoJSON FeatureCollection",
        true,
        200,
        &[401],
        &[],
        None,
    ),
    r(
        "get",
        "/v1/watches",
        "List watches (filter by vin, site_id)",
        true,
        200,
        &[401],
        &["vin", "site_id"],
        None,
    ),
    r(
        "post",
        "/v1/watches",
        "Create a watch",
        true,
        201,
        &[400, 401, 409, 413, 415, 422, 503, 507],
        &[],
        Some("Watch"),
    ),
    r(
        "get",
        "/v1/watches/{id}",
        "Get a watch with its progress",
        true,
        200,
        &[401, 404],
        &[],
        None,
    ),
    r(
        "delete",
        "/v1/watches/{id}",
        "Delete a watch",
        true,
        204,
        &[401, 404, 503, 507],
        &[],
        None,
    ),
    r(
        "get",
        "/v1/vehicles",
        "Vehicles near a point, nearest first",
        true,
        200,
        &[400, 401],
        &["near", "radius_m", "limit"],
        None,
    ),
    r(
        "get",
        "/v1/vehicles/{vin}",
        "Latest state of a vehicle, connected or not",
        true,
        200,
        &[401, 404],
        &[],
        None,
    ),
    r(
        "get",
        "/v1/connections",
        "Open vehicle connections (paged)",
        true,
        200,
        &[400, 401],
        &["limit", "offset"],
        None,
    ),
    r(
        "get",
        "/v1/vins",
        "VIN allow / block lists (admin and effective)",
        true,
        200,
        &[401],
        &[],
        None,
    ),
    r(
        "put",
        "/v1/vins/{list}/{vin}",
        "Add a VIN to the allow or block list; refused connections close",
        true,
        201,
        &[401, 404, 422, 503, 507],
        &[],
        None,
    ),
    r(
        "delete",
        "/v1/vins/{list}/{vin}",
        "Remove a VIN from a list",
        true,
        204,
        &[401, 404, 503, 507],
        &[],
        None,
    ),
];

fn schemas() -> Value {
    json!({
        "Error": {"type": "object", "required": ["error", "detail"], "properties": {
            "error": {"type": "string"}, "detail": {"type": "string"}}},
        "Site": {"type": "object", "required": ["geometry"], "properties": {
            "id": {"type": "string"}, "name": {"type": "string"}, "kind": {"type": "string"},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "radius_m": {"type": "number", "exclusiveMinimum": true, "minimum": 0, "maximum": 100000},
            "geometry": {"type": "object", "description": "GeoJSON Point, Polygon or MultiPolygon"}}},
        "FeatureCollection": {"type": "object", "required": ["type", "features"], "properties": {
            "type": {"type": "string", "enum": ["FeatureCollection"]},
            "features": {"type": "array", "items": {"type": "object"}}}},
        "Watch": {"type": "object", "required": ["watch_id", "vin", "site_id", "expires_at"], "properties": {
            "watch_id": {"type": "string"}, "vin": {"type": "string"}, "site_id": {"type": "string"},
            "target_soc": {"type": "number", "minimum": 0, "maximum": 100},
            "notify_eta_minutes": {"type": "number", "minimum": 0, "maximum": 1440},
            "expires_at": {"type": "string", "format": "date-time"}}},
        "Any": {"type": "object"}
    })
}

fn status_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad request (bad JSON or query)",
        401 => "Missing or wrong bearer token",
        404 => "Not found",
        409 => "Already exists",
        413 => "Body too large",
        415 => "Body is not JSON",
        422 => "Invalid values",
        503 => "Not ready / store unavailable",
        507 => "Data disk full",
        _ => "Response",
    }
}

/// The OpenAPI document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for route in ROUTES {
        let mut params: Vec<Value> = Vec::new();
        for seg in route.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                params.push(json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}));
            }
        }
        for q in route.query {
            params.push(
                json!({"name": q, "in": "query", "required": false, "schema": {"type": "string"}}),
            );
        }
        let mut responses = Map::new();
        let ok_content = if route.ok == 204 {
            json!({"description": status_text(204)})
        } else {
            let media = if GEOJSON_ROUTES.contains(&route.path) {
                "application/geo+json"
            } else {
                "application/json"
            };
            json!({"description": status_text(route.ok), "content": {media: {"schema": {"$ref": "#/components/schemas/Any"}}}})
        };
        responses.insert(route.ok.to_string(), ok_content);
        for e in route.errors {
            responses.insert(e.to_string(), json!({"description": status_text(*e),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
        }
        let mut op = json!({
            "summary": route.summary,
            "operationId": format!("{}{}", route.method, route.path.replace(['/', '{', '}', '.'], "_")),
            "parameters": params,
            "responses": responses,
        });
        if route.auth {
            op["security"] = json!([{"bearer": []}]);
        }
        if let Some(body) = route.body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{body}")}}}});
        }
        paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("path item is an object")
            .insert(route.method.to_owned(), op);
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "fleetgate admin API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Sites, watches, vehicles and connections of a fleetgate server."},
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}
