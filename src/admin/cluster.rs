//! This instance's place in the cluster.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AdminState;
use crate::api::ErrorBody;

/// The cluster route.
pub(super) fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new().routes(routes!(cluster_info))
}

/// `GET /v1/cluster`: this instance's place in the cluster.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterInfo {
    /// `embedded` or `cluster`.
    pub mode: &'static str,
    /// The cluster's name (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// This instance's id (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The `V` partitions whose vehicles' rules this instance owns now.
    pub rules_partitions: Vec<i32>,
    /// The rules joined their group and restored their first assignment.
    pub rules_joined: bool,
    /// A restore of assigned partitions is running now.
    pub restoring: bool,
}

/// This instance's place in the cluster: mode, name, id, the partitions whose rules it owns.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster", security(("bearer" = [])), responses(
    (status = 200, description = "Mode and ownership", body = ClusterInfo),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody)))]
async fn cluster_info(State(state): State<AdminState>) -> Json<ClusterInfo> {
    Json(match &state.cluster {
        None => ClusterInfo {
            mode: "embedded",
            name: None,
            instance: None,
            rules_partitions: Vec::new(),
            rules_joined: true,
            restoring: false,
        },
        Some(c) => {
            let status = c.rules.status();
            ClusterInfo {
                mode: "cluster",
                name: Some(c.name.clone()),
                instance: Some(c.instance_id.clone()),
                rules_partitions: status.owned(),
                rules_joined: status.joined.load(Ordering::Relaxed),
                restoring: status.restoring.load(Ordering::Relaxed),
            }
        }
    })
}
