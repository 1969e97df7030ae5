//! The OpenAPI document of the admin API. Paths, parameters, bodies and every response status
//! with its schema come from the handlers' own `#[utoipa::path]` annotations and types (see
//! [`super::api`]); this module adds what is common: the title, the bearer scheme, the tags.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder};

/// The document before the routes are added.
pub fn base() -> OpenApi {
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("fleetgate admin API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Sites, watches, VIN lists, vehicles, connections and Tesla onboarding of a fleetgate server. \
                     Every error is `{error, detail}` JSON; `/v1` needs `Authorization: Bearer`.",
                ))
                .build(),
        )
        .components(Some(
            ComponentsBuilder::new()
                .security_scheme(
                    "bearer",
                    SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
                )
                .build(),
        ))
        .build()
}

/// The document as served, with `/openapi.json` itself listed.
pub fn finish(mut doc: OpenApi) -> OpenApi {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    use utoipa::openapi::{ContentBuilder, ObjectBuilder, ResponseBuilder};
    let op = OperationBuilder::new()
        .summary(Some("This document"))
        .tag("health")
        .operation_id(Some("openapi"))
        .response(
            "200",
            ResponseBuilder::new()
                .description("The OpenAPI document")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(ObjectBuilder::new().build()))
                        .build(),
                )
                .build(),
        )
        .build();
    doc.paths
        .paths
        .insert("/openapi.json".into(), PathItem::new(HttpMethod::Get, op));
    doc
}
