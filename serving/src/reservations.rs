//! Checkout: `POST /v1/reservations` takes a cart all or nothing, against what the decision
//! would promise at that instant, in the hold store ([`HoldStore`], Redis): idempotent on the
//! client's key, expiring by itself, failing closed. `GET`, `DELETE` (release), `…/extend` and
//! `…/confirm` (the units become `reserve` events of the order, through the ingestion path).
//!
//! A cart is taken SKU by SKU (each SKU's lines atomically, in its own hash slot); when one SKU
//! is short, what the others took is released before the answer. A request that dies midway
//! leaves holds that expire with their TTL, and a retry with the same key takes the same holds
//! again (the hold script answers an id's existing holds), so it gets the first answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sellable_core::holds::{Begun, HoldLine, HoldOutcome, HoldStore, Taken, Until};
use sellable_core::{Event, EventKind, Grade, Millis};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::gather::Also;
use crate::{ApiError, Serving, MAX_QTY};

/// TTL of a reservation when the request names none, and the bounds of one it names (seconds).
pub const DEFAULT_TTL_S: i64 = 300;
pub const MIN_TTL_S: i64 = 10;
pub const MAX_TTL_S: i64 = 3_600;

/// Lines of one cart, at most.
pub const MAX_LINES: usize = 100;

/// How long a reservation's record is kept after it expires, for `GET` and for retries.
const RETAIN_MS: Millis = 24 * 3_600_000;

/// How long a request that claimed an id may take before a retry takes over from it (it died).
const PENDING_MS: Millis = 5_000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationRequest {
    /// The order the reservation is for; the idempotency key unless an `Idempotency-Key` header
    /// is sent.
    pub order_id: Option<String>,
    pub lines: Vec<LineRequest>,
    /// Seconds until an unconfirmed reservation stops counting.
    pub ttl_s: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    pub sku: String,
    pub qty: i64,
    /// Take the units at this node only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// A shipping region or a country the units must ship to (the node's region when only a node
    /// is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Whether the line may be split over several nodes.
    #[serde(default)]
    pub split: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Held,
    Confirmed,
    Released,
    Expired,
}

/// A reservation as the API answers it (and the store keeps it).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reservation {
    pub id: String,
    pub order_id: Option<String>,
    pub status: Status,
    /// Milliseconds since the epoch, by the hold store's clock.
    pub created_at: Millis,
    pub expires_at: Millis,
    pub ttl_s: i64,
    pub lines: Vec<LineHeld>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineHeld {
    #[serde(flatten)]
    pub request: LineRequest,
    /// Where the line's units are held.
    pub taken: Vec<Taken>,
}

/// A line that could not be met, and the units it could have had.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineShort {
    pub line: usize,
    pub sku: String,
    pub qty: i64,
    pub available: i64,
}

/// The answer to a cart that could not be met (409); nothing was taken.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Insufficient {
    pub id: String,
    pub error: String,
    pub message: String,
    pub lines: Vec<LineShort>,
}

/// What the store keeps under an id: the first answer, replayed to a retry. Its body is the
/// answer's JSON as it was sent, kept and replayed as text.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    key: String,
    status: u16,
    body: Box<RawValue>,
}

impl Answer {
    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK)
    }

    fn response(&self) -> Response {
        (self.status(), crate::json_response(self.body.get().as_bytes().to_vec())).into_response()
    }

    /// The record of `body` (encoded once) answered to `key` with `status`.
    fn of(key: &str, status: StatusCode, body: &impl Serialize) -> Result<Answer, ApiError> {
        let body = serde_json::value::to_raw_value(body).map_err(|error| ApiError::internal("writing a reservation's answer", error))?;
        Ok(Answer { key: key.to_string(), status: status.as_u16(), body })
    }

    /// The record as the store keeps it.
    fn record(&self) -> Result<String, ApiError> {
        serde_json::to_string(self).map_err(|error| ApiError::internal("writing a reservation's record", error))
    }
}

/// How a cart was decided: every line held, or the lines that could not be met.
enum Outcome {
    Held(Reservation),
    Short(Insufficient),
}

impl Outcome {
    fn status(&self) -> StatusCode {
        match self {
            Outcome::Held(_) => StatusCode::CREATED,
            Outcome::Short(_) => StatusCode::CONFLICT,
        }
    }

    fn answer(&self, key: &str) -> Result<Answer, ApiError> {
        match self {
            Outcome::Held(reservation) => Answer::of(key, self.status(), reservation),
            Outcome::Short(insufficient) => Answer::of(key, self.status(), insufficient),
        }
    }
}

/// The reservation id of a client key: FNV-1a (64 bits) of the key, so every server agrees.
pub fn reservation_id(key: &str) -> String {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    format!("r{hash:016x}")
}

fn store(serving: &Serving) -> Result<&Arc<dyn HoldStore>, ApiError> {
    serving.holds.as_ref().ok_or_else(|| ApiError::Refused("reservations need the Redis hold store (serve with --redis, or sellable run): nothing was reserved".into()))
}

/// A reservation whose holds lapsed: nothing of it is held any more.
fn expired(id: &str) -> ApiError {
    ApiError::Conflict(format!("reservation {id} has expired: its units are no longer held"))
}

fn unavailable(error: sellable_core::ViewError) -> ApiError {
    ApiError::Refused(format!("the hold store cannot be used ({error}): nothing was reserved"))
}

/// Checks a request; returns its idempotency key.
fn validate(request: &ReservationRequest, headers: &HeaderMap) -> Result<String, ApiError> {
    let header = headers.get("idempotency-key").map(|value| value.to_str().map_err(|_| ApiError::BadRequest("the Idempotency-Key header is not text".into())));
    let key = match (header.transpose()?, &request.order_id) {
        (Some(key), _) => key.to_string(),
        (None, Some(order)) => order.clone(),
        (None, None) => return Err(ApiError::BadRequest("a reservation needs a client key: an Idempotency-Key header or an order_id".into())),
    };
    if key.is_empty() || key.len() > 200 || key.chars().any(char::is_control) {
        return Err(ApiError::BadRequest("the idempotency key must be 1 to 200 characters without control characters".into()));
    }
    if request.lines.is_empty() || request.lines.len() > MAX_LINES {
        return Err(ApiError::BadRequest(format!("a reservation has 1 to {MAX_LINES} lines, got {}", request.lines.len())));
    }
    for (index, line) in request.lines.iter().enumerate() {
        if !(1..=MAX_QTY).contains(&line.qty) {
            return Err(ApiError::BadRequest(format!("line {index}: qty must be an integer from 1 to {MAX_QTY}, got {}", line.qty)));
        }
        if line.node.is_none() && line.region.is_none() {
            return Err(ApiError::BadRequest(format!("line {index}: give a region (or country) to ship to, or a node")));
        }
    }
    if let Some(ttl) = request.ttl_s.filter(|ttl| !(MIN_TTL_S..=MAX_TTL_S).contains(ttl)) {
        return Err(ApiError::BadRequest(format!("ttl_s must be from {MIN_TTL_S} to {MAX_TTL_S}, got {ttl}")));
    }
    Ok(key)
}

/// `POST /v1/reservations`: 201 with the reservation, 409 naming the lines that could not be met,
/// 503 when it cannot be decided safely (nothing taken). A retry with the same key gets the first
/// answer.
#[utoipa::path(post, path = "/v1/reservations", tag = "reservations", request_body = ReservationRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "The client's key (else the order_id)")),
    responses((status = 201, description = "Every line is held", body = Reservation),
              (status = 409, description = "Lines that cannot be met (nothing taken), or a key whose id another key holds", body = crate::openapi::ReservationConflict),
              (status = 503, description = "Cannot be decided safely now: nothing was taken", body = crate::openapi::ErrorBody)))]
pub async fn create(State(serving): State<Arc<Serving>>, headers: HeaderMap, body: String) -> Result<Response, ApiError> {
    let request: ReservationRequest = serde_json::from_str(&body).map_err(|error| ApiError::BadRequest(format!("the body is not a reservation: {error}")))?;
    let key = validate(&request, &headers)?;
    let holds = store(&serving)?;
    let id = reservation_id(&key);
    let ttl_s = request.ttl_s.unwrap_or(DEFAULT_TTL_S);
    // claim the id, or answer as the first request on it did; the cart is decided while the id
    // is claimed, and that decision is used when the claim is granted at once
    let started = std::time::Instant::now();
    let keep = ttl_s * 1000 + RETAIN_MS;
    let (mut begun, decided) = tokio::join!(holds.begin(&id, keep), decide(&serving, holds, &request));
    let mut decided = Some(decided);
    loop {
        match begun.map_err(unavailable)? {
            Begun::Owner => break,
            Begun::Found { record, pending_ms: None } => {
                let answer: Answer = serde_json::from_str(&record).map_err(|error| ApiError::internal("reading a reservation's record", error))?;
                if answer.key != key {
                    return Err(ApiError::Conflict(format!("reservation id {id} belongs to another key: use another key")));
                }
                return Ok(answer.response());
            }
            // another request on the key is deciding: wait for its answer; one that died is taken over
            Begun::Found { pending_ms: Some(age), .. } if age < PENDING_MS && started.elapsed().as_millis() < PENDING_MS as u128 => {
                // the decision made beside the claim is old by the time this one is granted
                decided = None;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Begun::Found { .. } => {
                decided = None;
                break;
            }
        }
        begun = holds.begin(&id, keep).await;
    }
    match reserve(&serving, holds, &id, &request, ttl_s, decided).await {
        Ok(outcome) => {
            let answer = outcome.answer(&key)?;
            holds.record(&id, &answer.record()?, keep).await.map_err(unavailable)?;
            log_lines(&serving, &headers, &id, &request, &outcome);
            Ok(answer.response())
        }
        Err(error) => {
            // not answered: nothing is held, and a retry decides afresh
            let _ = holds.forget(&id).await;
            Err(match error {
                ApiError::Unavailable(reason) => ApiError::Refused(format!("the speed view is unavailable ({reason}): nothing was reserved")),
                error => error,
            })
        }
    }
}

/// The lines of a reservation's first answer into the decision log: `held` on a 201 (with where
/// they were taken), else `short` (with the units available) or `not_taken`.
fn log_lines(serving: &Serving, headers: &HeaderMap, id: &str, request: &ReservationRequest, outcome: &Outcome) {
    let Some(log) = serving.decisions() else { return };
    let at = serving.now();
    let request_id = crate::request_id(headers);
    let batch_view = serving.epoch().batch.version.clone();
    let model = serving.models.current().map(|model| model.version().to_string());
    let ruleset = serving.rules.current().map(|rules| format!("{}@{}", rules.name, rules.version));
    let reasons = serde_json::to_string(&[format!("reservation {id}: {}", outcome.status().as_u16())]).expect("text serialises");
    for (index, line) in request.lines.iter().enumerate() {
        let (decision, units, options) = match outcome {
            Outcome::Held(reservation) => ("held", line.qty, serde_json::to_string(&reservation.lines[index].taken).expect("holds serialise")),
            Outcome::Short(insufficient) => match insufficient.lines.iter().find(|short| short.line == index) {
                Some(short) => ("short", 0, format!("{{\"available\":{}}}", short.available)),
                None => ("not_taken", 0, "null".to_string()),
            },
        };
        log.record(crate::decisions::Entry::Record(Box::new(sellable_core::DecisionRecord {
            at,
            request_id: request_id.to_string(),
            kind: "reservation".to_string(),
            sku: line.sku.clone(),
            region: line.region.clone().or_else(|| line.node.clone()).unwrap_or_default(),
            qty: line.qty,
            decision: decision.to_string(),
            units,
            grade: String::new(),
            reasons: reasons.clone(),
            options,
            rules_fired: "[]".to_string(),
            rules: String::new(),
            batch_view: batch_view.clone(),
            model: model.clone(),
            ruleset: ruleset.clone(),
        })));
    }
}

/// Decisions made again, at most, when confirmations keep changing what they were made on.
const ATTEMPTS: usize = 5;

/// A cart's lines decided, by SKU, with the `#confirms` count each SKU's decision was made after.
struct Decided<'a> {
    by_sku: BTreeMap<&'a str, Vec<HoldLine>>,
    confirms: BTreeMap<&'a str, u64>,
}

/// [`attempt`], again while a confirmation changed a SKU between its decision and its hold;
/// the first attempt takes `decided` when given.
async fn reserve<'a>(
    serving: &Serving,
    holds: &Arc<dyn HoldStore>,
    id: &str,
    request: &'a ReservationRequest,
    ttl_s: i64,
    mut decided: Option<Result<Decided<'a>, ApiError>>,
) -> Result<Outcome, ApiError> {
    for _ in 0..ATTEMPTS {
        let cart = match decided.take() {
            Some(cart) => cart?,
            None => decide(serving, holds, request).await?,
        };
        if let Some(outcome) = attempt(holds, id, request, ttl_s, cart).await? {
            return Ok(outcome);
        }
    }
    Err(ApiError::Refused(format!("the SKUs of this cart were confirmed by other orders {ATTEMPTS} times while it was decided: nothing was reserved; retry")))
}

/// Decides every line of the cart: per SKU what each node could promise (live holds not
/// subtracted: the store does that as it takes them). Each line's SKU is read after its
/// `#confirms` count, so that a confirmation landing after the read is seen by the hold script:
/// in the same round trip where the hold store is on the speed view's server (a SKU of several
/// lines keeps the lowest count its reads came after), else in a round trip before.
async fn decide<'a>(serving: &Serving, holds: &Arc<dyn HoldStore>, request: &'a ReservationRequest) -> Result<Decided<'a>, ApiError> {
    let now = serving.now();
    let (also, mut confirms) = if crate::gather::confirms_ahead(holds.as_ref(), serving.epoch().speed.as_ref()) {
        (Also::Confirms, BTreeMap::new())
    } else {
        let skus: std::collections::BTreeSet<&str> = request.lines.iter().map(|line| line.sku.as_str()).collect();
        let counts = futures::future::join_all(skus.iter().map(|sku| holds.confirms(sku))).await;
        (Also::Nothing, skus.into_iter().zip(counts).map(|(sku, count)| Ok((sku, count.map_err(unavailable)?))).collect::<Result<BTreeMap<_, _>, ApiError>>()?)
    };
    let mut regions = Vec::with_capacity(request.lines.len());
    for (index, line) in request.lines.iter().enumerate() {
        regions.push(match (&line.region, &line.node) {
            (Some(region), _) => region.clone(),
            (None, Some(node)) => serving.nodes.get(node).map(|info| info.region.clone()).ok_or_else(|| ApiError::BadRequest(format!("line {index}: unknown node '{node}'")))?,
            (None, None) => unreachable!("validated"),
        });
    }
    let answers = futures::future::join_all(request.lines.iter().zip(&regions).map(|(line, region)| serving.decide_sku(&line.sku, region, line.node.as_deref(), line.qty, None, now, also))).await;
    let mut by_sku: BTreeMap<&str, Vec<HoldLine>> = BTreeMap::new();
    for (index, (line, answer)) in request.lines.iter().zip(answers).enumerate() {
        let (answer, promisable, count) = answer?;
        if matches!(answer.grade, Grade::Conservative | Grade::Unavailable) {
            return Err(ApiError::Refused(format!(
                "line {index} ({}) cannot be decided safely now ({}): nothing was reserved",
                line.sku,
                answer.degraded_reasons.join("; ")
            )));
        }
        if also == Also::Confirms {
            let count = count.unwrap_or_else(|| Err("not read".to_string())).map_err(|why| {
                ApiError::Refused(format!("line {index} ({}): the reservations' count of confirmations could not be read ({why}): nothing was reserved", line.sku))
            })?;
            confirms.entry(line.sku.as_str()).and_modify(|lowest| *lowest = (*lowest).min(count)).or_insert(count);
        }
        let options = promisable.into_iter().filter(|(_, units)| *units > 0).collect();
        by_sku.entry(line.sku.as_str()).or_default().push(HoldLine { line: index, qty: line.qty, split: line.split, options });
    }
    Ok(Decided { by_sku, confirms })
}

/// Takes a decided cart SKU by SKU, and releases what was taken if any is short; `None` when a
/// SKU was confirmed by another order since its decision (nothing is held then). The first SKU's
/// hold sets the expiry (the store's clock then, plus the TTL); the others expire with it.
async fn attempt(holds: &Arc<dyn HoldStore>, id: &str, request: &ReservationRequest, ttl_s: i64, cart: Decided<'_>) -> Result<Option<Outcome>, ApiError> {
    let Decided { by_sku, confirms } = cart;
    let mut expiry: Option<Millis> = None;
    let mut taken: BTreeMap<usize, Vec<Taken>> = BTreeMap::new();
    let mut short = Vec::new();
    let mut touched = Vec::new();
    for (sku, lines) in &by_sku {
        let until = expiry.map_or(Until::After(ttl_s * 1000), Until::At);
        let outcome = match holds.hold(id, sku, lines, until, confirms[sku]).await {
            Ok(outcome) => outcome,
            Err(error) => {
                release_all(holds, id, &touched).await;
                return Err(unavailable(error));
            }
        };
        match outcome {
            HoldOutcome::Held { expires, lines } => {
                expiry.get_or_insert(expires);
                touched.push(*sku);
                taken.extend(lines);
            }
            HoldOutcome::Short(lines) => short.extend(lines),
            HoldOutcome::Stale => {
                release_all(holds, id, &touched).await;
                return Ok(None);
            }
        }
    }
    if !short.is_empty() {
        release_all(holds, id, &touched).await;
        let lines: Vec<LineShort> = short
            .into_iter()
            .map(|(line, available)| {
                let request = &request.lines[line];
                LineShort { line, sku: request.sku.clone(), qty: request.qty, available }
            })
            .collect();
        let message = lines.iter().map(|line| format!("line {} ({}): {} of {} available", line.line, line.sku, line.available, line.qty)).collect::<Vec<_>>().join("; ");
        return Ok(Some(Outcome::Short(Insufficient { id: id.to_string(), error: "insufficient".into(), message: format!("nothing was reserved: {message}"), lines })));
    }
    let lines = request.lines.iter().enumerate().map(|(index, line)| LineHeld { request: line.clone(), taken: taken.remove(&index).unwrap_or_default() }).collect();
    let expires = expiry.expect("a cart with no short line held its first SKU");
    let reservation = Reservation { id: id.to_string(), order_id: request.order_id.clone(), status: Status::Held, created_at: expires - ttl_s * 1000, expires_at: expires, ttl_s, lines };
    Ok(Some(Outcome::Held(reservation)))
}

/// Drops the holds of `id` on `skus` (best effort: what is not dropped expires).
async fn release_all(holds: &Arc<dyn HoldStore>, id: &str, skus: &[&str]) {
    for sku in skus {
        if let Err(error) = holds.release(id, sku, false).await {
            tracing::warn!(%error, id, sku, "could not release a hold; it expires with its TTL");
        }
    }
}

/// The reservation stored under `id` (a 201 answer), with `expired` when its holds have lapsed.
async fn load(holds: &Arc<dyn HoldStore>, id: &str) -> Result<(Answer, Reservation), ApiError> {
    let record = holds.get(id).await.map_err(unavailable)?.ok_or_else(|| ApiError::UnknownReservation(id.to_string()))?;
    let answer: Answer = serde_json::from_str(&record).map_err(|error| ApiError::internal("reading a reservation's record", error))?;
    let mut reservation: Reservation = match answer.status {
        201 => serde_json::from_str(answer.body.get()).map_err(|error| ApiError::internal("reading a reservation", error))?,
        _ => return Err(ApiError::UnknownReservation(id.to_string())),
    };
    if reservation.status == Status::Held && reservation.expires_at <= holds.now().await.map_err(unavailable)? {
        reservation.status = Status::Expired;
    }
    Ok((answer, reservation))
}

async fn save(holds: &Arc<dyn HoldStore>, answer: Answer, reservation: &Reservation) -> Result<Json<Reservation>, ApiError> {
    // the first answer's key and status stay: a retry of the request gets the reservation as it is now
    let answer = Answer::of(&answer.key, answer.status(), reservation)?;
    holds.record(&reservation.id, &answer.record()?, (reservation.expires_at - holds.now().await.map_err(unavailable)?).max(0) + RETAIN_MS).await.map_err(unavailable)?;
    Ok(Json(reservation.clone()))
}

fn skus(reservation: &Reservation) -> Vec<&str> {
    let skus: std::collections::BTreeSet<&str> = reservation.lines.iter().map(|line| line.request.sku.as_str()).collect();
    skus.into_iter().collect()
}

/// `GET /v1/reservations/{id}`.
#[utoipa::path(get, path = "/v1/reservations/{id}", tag = "reservations", params(("id" = String, Path, description = "The reservation id")),
    responses((status = 200, description = "The reservation", body = Reservation), (status = 404, description = "No such reservation", body = crate::openapi::ErrorBody)))]
pub async fn show(State(serving): State<Arc<Serving>>, Path(id): Path<String>) -> Result<Json<Reservation>, ApiError> {
    Ok(Json(load(store(&serving)?, &id).await?.1))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// Seconds from now; the reservation's own TTL when not given.
    pub ttl_s: Option<i64>,
}

/// `POST /v1/reservations/{id}/extend`: a held reservation counts until now + `ttl_s`; 409 once
/// it has expired or is no longer held.
#[utoipa::path(post, path = "/v1/reservations/{id}/extend", tag = "reservations", params(("id" = String, Path, description = "The reservation id")), request_body(content = Option<ExtendRequest>, description = "Empty: the reservation's own TTL"),
    responses((status = 200, description = "Held until the new expiry", body = Reservation), (status = 404, description = "No such reservation", body = crate::openapi::ErrorBody),
              (status = 409, description = "Not held any more", body = crate::openapi::ErrorBody)))]
pub async fn extend(State(serving): State<Arc<Serving>>, Path(id): Path<String>, body: String) -> Result<Json<Reservation>, ApiError> {
    let request: ExtendRequest = if body.trim().is_empty() {
        ExtendRequest::default()
    } else {
        serde_json::from_str(&body).map_err(|error| ApiError::BadRequest(format!("the body is not an extension: {error}")))?
    };
    let holds = store(&serving)?;
    let (answer, mut reservation) = load(holds, &id).await?;
    if reservation.status != Status::Held {
        return Err(ApiError::Conflict(format!("reservation {id} is {:?}, not held: it cannot be extended", reservation.status).to_lowercase()));
    }
    let ttl_s = request.ttl_s.unwrap_or(reservation.ttl_s);
    if !(MIN_TTL_S..=MAX_TTL_S).contains(&ttl_s) {
        return Err(ApiError::BadRequest(format!("ttl_s must be from {MIN_TTL_S} to {MAX_TTL_S}, got {ttl_s}")));
    }
    let expires = holds.now().await.map_err(unavailable)? + ttl_s * 1000;
    let mut live = 0;
    for sku in skus(&reservation) {
        live += holds.extend(&id, sku, expires).await.map_err(unavailable)?;
    }
    if live == 0 {
        return Err(expired(&id));
    }
    reservation.expires_at = expires;
    save(holds, answer, &reservation).await
}

/// `POST /v1/reservations/{id}/confirm`: the held units become `reserve` events of the order,
/// through the one ingestion path; then the holds are dropped (the speed view counts the units).
/// Confirming again answers the same.
#[utoipa::path(post, path = "/v1/reservations/{id}/confirm", tag = "reservations", params(("id" = String, Path, description = "The reservation id")),
    responses((status = 200, description = "The units are the order's now", body = Reservation), (status = 404, description = "No such reservation", body = crate::openapi::ErrorBody),
              (status = 409, description = "Expired or released", body = crate::openapi::ErrorBody)))]
pub async fn confirm(State(serving): State<Arc<Serving>>, Path(id): Path<String>) -> Result<Json<Reservation>, ApiError> {
    let holds = store(&serving)?;
    let (answer, mut reservation) = load(holds, &id).await?;
    match reservation.status {
        Status::Confirmed => return Ok(Json(reservation)),
        Status::Held => {}
        status => return Err(ApiError::Conflict(format!("reservation {id} is {status:?}: only a held reservation is confirmed").to_lowercase())),
    }
    // the holds keep counting while the events are written (a minute at least); a SKU whose
    // holds lapsed meanwhile holds nothing to confirm
    let grace = holds.now().await.map_err(unavailable)? + 60_000;
    for sku in skus(&reservation) {
        if holds.extend(&id, sku, grace.max(reservation.expires_at)).await.map_err(unavailable)? == 0 {
            release_all(holds, &id, &skus(&reservation)).await;
            return Err(expired(&id));
        }
    }
    let now = serving.now();
    let order = reservation.order_id.clone().unwrap_or_else(|| id.clone());
    let mut events = Vec::new();
    for (index, line) in reservation.lines.iter().enumerate() {
        for taken in &line.taken {
            let mut event = Event {
                event_id: format!("{id}/{index}/{}", taken.node),
                ts: now,
                sku: line.request.sku.clone(),
                node: taken.node.clone(),
                kind: EventKind::Reserve,
                qty: taken.units,
                order_id: Some(order.clone()),
                arrived: None,
            };
            sellable_core::Door::stamp(&mut event, now);
            events.push(event);
        }
    }
    serving.ingest(&serving.epoch(), &events).await?;
    for sku in skus(&reservation) {
        holds.release(&id, sku, true).await.map_err(unavailable)?;
    }
    reservation.status = Status::Confirmed;
    save(holds, answer, &reservation).await
}

/// `DELETE /v1/reservations/{id}`: the held units are free again at once. Releasing again (or an
/// expired reservation) answers the same; a confirmed one is an order now: cancel it with a
/// `release` event instead.
#[utoipa::path(delete, path = "/v1/reservations/{id}", tag = "reservations", params(("id" = String, Path, description = "The reservation id")),
    responses((status = 200, description = "Released", body = Reservation), (status = 404, description = "No such reservation", body = crate::openapi::ErrorBody),
              (status = 409, description = "Confirmed: an order now", body = crate::openapi::ErrorBody)))]
pub async fn release(State(serving): State<Arc<Serving>>, Path(id): Path<String>) -> Result<Json<Reservation>, ApiError> {
    let holds = store(&serving)?;
    let (answer, mut reservation) = load(holds, &id).await?;
    match reservation.status {
        Status::Released => return Ok(Json(reservation)),
        Status::Confirmed => return Err(ApiError::Conflict(format!("reservation {id} is confirmed: release the order's units with a release event"))),
        Status::Held | Status::Expired => {}
    }
    for sku in skus(&reservation) {
        holds.release(&id, sku, false).await.map_err(unavailable)?;
    }
    reservation.status = Status::Released;
    save(holds, answer, &reservation).await
}
