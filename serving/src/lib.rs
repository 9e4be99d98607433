//! sellable-serving: the REST API. It merges the batch view with the speed view, decides, and
//! explains every answer. Only this crate knows about JSON and HTTP; its API types convert
//! explicitly from the domain types of `core`.
//!
//! Tests: `tests/it/` (the end-to-end test gen → batch → fold → REST, with real Redis and with
//! the embedded store).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sellable_core::{decide, merge_views, BatchView, Decision, Millis, NodeInfo, SkuInfo, SpeedSource, Verdict};

/// Everything an answer is computed from. Immutable except for the speed view, which changes
/// underneath as events are folded.
pub struct Serving {
    pub skus: HashMap<String, SkuInfo>,
    pub nodes: HashMap<String, NodeInfo>,
    pub batch: BatchView,
    pub speed: Arc<dyn SpeedSource>,
}

impl Serving {
    pub fn new(skus: Vec<SkuInfo>, nodes: Vec<NodeInfo>, batch: BatchView, speed: Arc<dyn SpeedSource>) -> Serving {
        Serving {
            skus: skus.into_iter().map(|sku| (sku.sku.clone(), sku)).collect(),
            nodes: nodes.into_iter().map(|node| (node.node.clone(), node)).collect(),
            batch,
            speed,
        }
    }

    /// Merges both views for `sku`, keeps the nodes serving `region`, and decides.
    pub async fn availability(&self, sku: &str, region: &str, qty: i64, now: Millis) -> Result<Availability, ApiError> {
        if !self.skus.contains_key(sku) {
            return Err(ApiError::UnknownSku(sku.to_string()));
        }
        if !self.nodes.values().any(|node| node.serves(region)) {
            return Err(ApiError::BadRequest(format!("unknown region '{region}': no node serves it")));
        }
        let mut degraded = vec!["model unavailable: naive ATP only".to_string()];
        let speed = match self.speed.sku_states(sku).await {
            Ok(states) => states,
            Err(error) => {
                tracing::warn!(sku, %error, "speed view unavailable");
                degraded.push(format!("speed view unavailable ({error}): batch view only"));
                Vec::new()
            }
        };
        let merged = merge_views(self.batch.sku_states(sku), &speed);
        let in_region: Vec<(&str, &sellable_core::NodeState)> = merged
            .iter()
            .filter(|(node, _)| self.nodes.get(**node).is_some_and(|info| info.serves(region)))
            .map(|(node, state)| (*node, state))
            .collect();
        let newest = in_region.iter().filter_map(|(_, state)| state.last_arrived).max();
        let decision = decide(qty, in_region.iter().map(|(node, state)| (node.to_string(), state.atp())));
        Ok(Availability::new(sku, region, qty, decision, degraded, newest.map(|t| now - t), self))
    }

    pub fn router(self: Arc<Serving>) -> Router {
        Router::new()
            .route("/v1/availability/{sku}", get(availability))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self)
    }
}

/// The JSON decision of DESIGN.md.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Availability {
    pub sku: String,
    pub region: String,
    pub qty: i64,
    /// `promise` or `deny`.
    pub decision: Verdict,
    /// Units promised (the requested quantity, or 0 on deny).
    pub units: i64,
    /// Units available in the region, all options together.
    pub available: i64,
    pub options: Vec<OptionJson>,
    pub reasons: Vec<String>,
    pub rules_fired: Vec<String>,
    pub degraded: bool,
    pub degraded_reasons: Vec<String>,
    /// Age of the newest event behind this answer, by arrival; null if no event at all.
    pub freshness_ms: Option<i64>,
    pub versions: Versions,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OptionJson {
    pub node: String,
    pub units: i64,
    pub p_fulfill: Option<f64>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Versions {
    pub batch_view: String,
    pub speed_view: String,
    pub model: Option<String>,
    pub ruleset: Option<String>,
}

impl Availability {
    fn new(
        sku: &str,
        region: &str,
        qty: i64,
        decision: Decision,
        degraded_reasons: Vec<String>,
        freshness_ms: Option<i64>,
        serving: &Serving,
    ) -> Availability {
        Availability {
            sku: sku.to_string(),
            region: region.to_string(),
            qty,
            decision: decision.verdict,
            units: decision.units,
            available: decision.available,
            options: decision
                .options
                .into_iter()
                .map(|option| OptionJson { node: option.node, units: option.units, p_fulfill: option.p_fulfill })
                .collect(),
            reasons: decision.reasons,
            rules_fired: Vec::new(),
            degraded: !degraded_reasons.is_empty(),
            degraded_reasons,
            freshness_ms,
            versions: Versions {
                batch_view: serving.batch.version.clone(),
                speed_view: serving.speed.describe(),
                model: None,
                ruleset: None,
            },
        }
    }
}

/// Every failure a client can see, answered as `{"error": "...", "message": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("unknown sku '{0}'")]
    UnknownSku(String),
    #[error("{0}")]
    BadRequest(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::UnknownSku(_) => (StatusCode::NOT_FOUND, "unknown_sku"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        };
        let body = serde_json::json!({ "error": code, "message": self.to_string() });
        (status, Json(body)).into_response()
    }
}

/// Largest quantity one request may ask for; anything above is a client bug.
const MAX_QTY: i64 = 1_000_000;

fn parse_qty(text: Option<&String>) -> Result<i64, ApiError> {
    let Some(text) = text else { return Ok(1) };
    match text.parse::<i64>() {
        Ok(qty) if (1..=MAX_QTY).contains(&qty) => Ok(qty),
        _ => Err(ApiError::BadRequest(format!("qty must be an integer from 1 to {MAX_QTY}, got '{text}'"))),
    }
}

async fn availability(
    State(serving): State<Arc<Serving>>,
    Path(sku): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Availability>, ApiError> {
    let qty = parse_qty(params.get("qty"))?;
    let region = params
        .get("region")
        .filter(|region| !region.is_empty())
        .ok_or_else(|| ApiError::BadRequest("region is required, e.g. ?region=DE".to_string()))?;
    let now = chrono::Utc::now().timestamp_millis();
    let answer = serving.availability(&sku, region, qty, now).await;
    match &answer {
        Ok(answer) => tracing::debug!(sku, region, qty, decision = ?answer.decision, "answered"),
        Err(error) => tracing::info!(sku, region, qty, %error, "rejected"),
    }
    answer.map(Json)
}
