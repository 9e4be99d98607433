//! The OpenAPI 3.1 document of the REST API, generated from the handlers' annotations and the
//! API types, served at `GET /openapi.json`. What every route shares is added here, from the same
//! code the server runs: the scope each route needs ([`crate::door::scope_of`]), the paths open
//! without a key, and the error answers any route can give (the JSON error body).

use std::sync::Arc;

use axum::http::Method;
use axum::Json;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref};
use utoipa::OpenApi;

use crate::door::{scope_of, DoorConfig};

/// Every failure: a code a program can match on, and a message for a person.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "error": "unknown_sku", "message": "unknown sku 'SKU-X'" }))]
pub struct ErrorBody {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `unknown_sku`,
    /// `unknown_reservation`, `method_not_allowed`, `conflict`, `too_large`,
    /// `unsupported_media_type`, `invalid_rules`, `invalid_model`, `too_many_requests`,
    /// `unavailable`, `overloaded` or `internal`.
    pub error: String,
    pub message: String,
}

/// One event of `POST /v1/events` (DESIGN.md's event schema).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({ "event_id": "e-1", "ts": 1767225600000_i64, "sku": "SKU-000001", "node": "ST-0001", "kind": "receipt", "qty": 5 }))]
pub struct EventBody {
    /// Unique per event: a copy is folded once.
    pub event_id: String,
    /// When it happened: milliseconds since the epoch, or an RFC 3339 time.
    #[schema(value_type = Object)]
    pub ts: serde_json::Value,
    pub sku: String,
    pub node: String,
    /// `receipt`, `sale`, `reserve`, `release`, `cancel`, `return`, `count`, `short` or `ship`.
    pub kind: String,
    pub qty: i64,
    pub order_id: Option<String>,
}

/// The answer of `POST /v1/availability:batch`: one entry per item, in order.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct BatchAnswer {
    pub answers: Vec<BatchEntry>,
}

/// An item's answer, or its error alone.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BatchEntry {
    Answer(Box<crate::Availability>),
    Error(ErrorBody),
}

/// The answer of `POST /v1/rules:check`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RulesCheck {
    /// Whether the file loads (no error).
    pub ok: bool,
    /// Errors and warnings, each with its place and rendered with a caret.
    #[schema(value_type = Vec<Object>)]
    pub diagnostics: Vec<serde_json::Value>,
    /// The file's `test` blocks, run when it loads.
    #[schema(value_type = Vec<Object>)]
    pub tests: Vec<serde_json::Value>,
}

/// A 409 of `POST /v1/reservations`: a short cart, or a key whose id another key holds.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ReservationConflict {
    Short(crate::reservations::Insufficient),
    Error(ErrorBody),
}

#[derive(OpenApi)]
#[openapi(
    info(title = "sellable", description = "Real-time available-to-promise: availability answers, reservations, event ingestion. docs/api.md is the guide."),
    paths(
        crate::availability,
        crate::availability_batch,
        crate::post_events,
        crate::reservations::create,
        crate::reservations::show,
        crate::reservations::release,
        crate::reservations::extend,
        crate::reservations::confirm,
        crate::features,
        crate::model_status,
        crate::model_reload,
        crate::rules_status,
        crate::rules_reload,
        crate::rules_check,
        crate::metrics,
        crate::healthz,
        crate::readyz,
        document,
    ),
    components(schemas(ErrorBody, crate::reservations::Insufficient))
)]
struct Api;

/// The document, with the scopes of `door` (every route keyed when there is none: the bare
/// router of tests is documented as `sellable serve` answers).
pub fn build(door: Option<&DoorConfig>) -> utoipa::openapi::OpenApi {
    let mut api = Api::openapi();
    let default = DoorConfig::default();
    let door = door.unwrap_or(&default);
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("An API key: `sellable keys new --scope SCOPE`")).build()));
    for (path, item) in api.paths.paths.iter_mut() {
        let operations = [
            (Method::GET, &mut item.get),
            (Method::POST, &mut item.post),
            (Method::DELETE, &mut item.delete),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let open = door.open.iter().any(|open| open == path);
            let scope = scope_of(&method, path);
            if !open {
                operation.security = Some(vec![SecurityRequirement::new("bearer", [scope.as_str()])]);
                let needs = format!("Needs a key with the scope `{}`.", scope.as_str());
                operation.description = Some(match operation.description.take().filter(|text| !text.is_empty()) {
                    Some(text) => format!("{text}\n\n{needs}"),
                    None => needs,
                });
            }
            add_errors(operation, open, method != Method::GET);
        }
    }
    api
}

/// The error answers the door and the framework can give on any route.
fn add_errors(operation: &mut Operation, open: bool, body: bool) {
    let mut statuses = vec![("400", "The request is malformed: a path, query or body that does not parse, or a Host that does not name this server"), ("500", "A bug: logged, answered without details")];
    if !open {
        statuses.extend([
            ("401", "No API key, or one that is not known"),
            ("403", "The key lacks the scope this route needs"),
            ("429", "The key is past its rate; `Retry-After` says when to come back"),
            ("503", "Overloaded, past the route's time, or a part it needs cannot be used now: nothing was done; `Retry-After` says when to retry"),
        ]);
    }
    if body {
        statuses.extend([("413", "The body (or the number of its items) is past the route's limit"), ("415", "The body's Content-Type is not one the route takes")]);
    }
    for (status, description) in statuses {
        if operation.responses.responses.contains_key(status) {
            continue;
        }
        let response = ResponseBuilder::new()
            .description(description)
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
            .build();
        operation.responses.responses.insert(status.to_string(), response.into());
    }
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)))]
pub(crate) async fn document(door: Option<axum::Extension<Arc<DoorConfig>>>) -> Json<utoipa::openapi::OpenApi> {
    Json(build(door.as_ref().map(|door| door.0.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation is documented with its answers, the error body on every error status, and
    /// the scope the door asks for, in a 3.1 document that parses back.
    #[test]
    fn every_operation_says_its_scope_and_its_errors() {
        let document = serde_json::to_value(build(None)).unwrap();
        if let Ok(path) = std::env::var("SELLABLE_OPENAPI_OUT") {
            std::fs::write(path, serde_json::to_string_pretty(&document).unwrap()).unwrap();
        }
        assert!(document["openapi"].as_str().unwrap().starts_with("3.1"), "{}", document["openapi"]);
        let paths = document["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 17, "{:?}", paths.keys().collect::<Vec<_>>());
        let open = DoorConfig::default().open;
        for (path, item) in paths {
            for (method, operation) in item.as_object().unwrap() {
                let responses = operation["responses"].as_object().unwrap();
                assert!(responses.keys().any(|status| status.starts_with('2')), "{method} {path}");
                assert!(responses.contains_key("500") && responses.contains_key("400"), "{method} {path}");
                let scope = scope_of(&method.to_uppercase().parse().unwrap(), path);
                if open.contains(path) {
                    assert!(operation.get("security").is_none(), "{method} {path}");
                } else {
                    assert_eq!(operation["security"][0]["bearer"][0], scope.as_str(), "{method} {path}");
                    assert!(responses.contains_key("401") && responses.contains_key("403"), "{method} {path}");
                }
            }
        }
        let parsed: utoipa::openapi::OpenApi = serde_json::from_value(document).unwrap();
        assert!(parsed.components.unwrap().security_schemes.contains_key("bearer"));
    }
}
