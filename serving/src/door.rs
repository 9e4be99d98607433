//! The server's door: what every request passes before a handler sees it, and the connection
//! loop under it. In order:
//!
//! 1. the `Host` header must name the server ([`DoorConfig::hosts`]): a page of another site, or
//!    a DNS name rebound to this address, cannot reach it;
//! 2. a key (`Authorization: Bearer KEY`) whose scopes hold the one the route needs
//!    ([`scope_of`]), unless the path is open ([`DoorConfig::open`]): 401 without a valid key,
//!    403 with a key that lacks the scope. Keys are kept as SHA-256 digests, compared in constant
//!    time, and named in logs only by their name;
//! 3. the key's rate ([`Limits::rate_per_key`]): 429 with `Retry-After` past it;
//! 4. a body only as `application/json` (or `application/x-ndjson` for events, `text/plain` for a
//!    rule file to check): 415 otherwise;
//! 5. a place among the requests in flight ([`Limits::max_in_flight`], and
//!    [`Limits::max_ingest_in_flight`] for event posts): 503 with `Retry-After` at once when there
//!    is none, before any queue grows;
//! 6. an answer within the route's time ([`Limits::read_timeout_ms`] and the others): 503 with
//!    `Retry-After` past it, the handler dropped.
//!
//! Bodies are bounded per route by the router ([`body_limit`]). Under all this, [`serve_lanes`]
//! answers on one thread per core, each with a listening socket of its own, caps the open
//! connections and closes those that send no complete header within
//! [`Limits::header_timeout_ms`] (an idle keep-alive connection included).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ApiError;

/// What a key may do. Every route needs exactly one ([`scope_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Availability, features, model and rules status, metrics and health when not open.
    Read,
    /// Reservations: create, read, extend, confirm, release.
    Reserve,
    /// `POST /v1/events`: writes of inventory.
    Ingest,
    /// Reloads of the model and the rules, and rule checks.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Reserve, Scope::Ingest, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Reserve => "reserve",
            Scope::Ingest => "ingest",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(text: &str) -> Result<Scope, String> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == text).ok_or_else(|| format!("unknown scope '{text}' (known: read, reserve, ingest, admin)"))
    }
}

/// The scope a request needs: reservations need `reserve`, `POST /v1/events` needs `ingest`,
/// reloads and rule checks need `admin`, everything else (unknown paths too) needs `read`.
pub fn scope_of(method: &Method, path: &str) -> Scope {
    if path.starts_with("/v1/reservations") {
        Scope::Reserve
    } else if path == "/v1/events" && method == Method::POST {
        Scope::Ingest
    } else if matches!(path, "/v1/model:reload" | "/v1/rules:reload" | "/v1/rules:check") {
        Scope::Admin
    } else {
        Scope::Read
    }
}

/// One API key as the configuration keeps it: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Who holds the key; logs name a request's key by this.
    pub name: String,
    pub scopes: Vec<Scope>,
    /// The SHA-256 digest of the key, in hex.
    pub sha256: String,
}

/// Characters of a key after its prefix: 32 random bytes in hex.
const KEY_PREFIX: &str = "sk_";

impl KeyEntry {
    /// A new random key for `name` with `scopes`: the key (shown once) and its entry.
    pub fn generate(name: &str, scopes: Vec<Scope>) -> (String, KeyEntry) {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let key = format!("{KEY_PREFIX}{}", hex(&bytes));
        let entry = KeyEntry { name: name.to_string(), scopes, sha256: digest(&key) };
        (key, entry)
    }
}

/// The SHA-256 digest of a key, in hex.
pub fn digest(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Everything the door lets through or not; `[serve]` of the configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DoorConfig {
    /// The API keys (`sellable keys new` makes one).
    pub keys: Vec<KeyEntry>,
    /// Paths answered without a key.
    pub open: Vec<String>,
    /// Names the `Host` header may carry (without the port); `*` takes any.
    pub hosts: Vec<String>,
    pub limits: Limits,
}

impl Default for DoorConfig {
    fn default() -> DoorConfig {
        DoorConfig {
            keys: Vec::new(),
            open: ["/healthz", "/readyz", "/metrics", "/openapi.json"].map(String::from).to_vec(),
            hosts: ["localhost", "127.0.0.1", "[::1]"].map(String::from).to_vec(),
            limits: Limits::default(),
        }
    }
}

/// Limits on what one client can take; `[serve.limits]` of the configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest answer of a `read` route (availability, features, status), in milliseconds.
    pub read_timeout_ms: u64,
    /// Longest answer of a reservation route: more than the 5 s after which a retry takes over
    /// a reservation whose first request died, so that retry is answered in one request.
    pub reserve_timeout_ms: u64,
    /// Longest answer of `POST /v1/events`, the reloads and rule checks.
    pub write_timeout_ms: u64,
    /// Requests handled at once (open paths aside); past it a request is answered 503 at once.
    pub max_in_flight: usize,
    /// `POST /v1/events` handled at once, within `max_in_flight`: what decoding bodies may hold
    /// is this many times a body's bound, whatever the number of clients.
    pub max_ingest_in_flight: usize,
    /// Requests per second per key (the burst is one second's worth); 0: no limit.
    pub rate_per_key: u32,
    /// Connections open at once; past it new ones wait in the listen backlog.
    pub max_connections: usize,
    /// Time a connection has to send a request's whole header, also while it is idle between
    /// requests, in milliseconds.
    pub header_timeout_ms: u64,
    /// Largest body of `POST /v1/events`, in bytes.
    pub events_body_bytes: usize,
    /// Events (array items or NDJSON lines) in one `POST /v1/events`.
    pub events_per_request: usize,
    /// Largest rule file `POST /v1/rules:check` takes, in bytes.
    pub rules_body_bytes: usize,
    /// Largest body of every other route, in bytes.
    pub body_bytes: usize,
    /// Threads that answer requests ([`sellable_core::lane`]), each with its own listening
    /// socket and connections to the speed view; 0: one per core.
    pub lanes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            read_timeout_ms: 500,
            reserve_timeout_ms: 8_000,
            write_timeout_ms: 30_000,
            max_in_flight: 512,
            max_ingest_in_flight: 8,
            rate_per_key: 50_000,
            max_connections: 4_096,
            header_timeout_ms: 5_000,
            events_body_bytes: 4 << 20,
            events_per_request: 10_000,
            rules_body_bytes: 256 << 10,
            body_bytes: 256 << 10,
            lanes: 0,
        }
    }
}

impl DoorConfig {
    /// What no type can say: digests that are not SHA-256, names twice, keys without scopes,
    /// limits of zero. Each problem names the key or limit.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut names = std::collections::HashSet::new();
        for key in &self.keys {
            if key.name.is_empty() || !names.insert(key.name.as_str()) {
                problems.push(format!("serve.keys: the name {:?} is empty or given twice", key.name));
            }
            if unhex(&key.sha256).is_none() {
                problems.push(format!("serve.keys[{}].sha256: expected 64 hex digits (the SHA-256 of the key; `sellable keys new` prints it)", key.name));
            }
            if key.scopes.is_empty() {
                problems.push(format!("serve.keys[{}].scopes: a key needs at least one scope (read, reserve, ingest, admin)", key.name));
            }
        }
        let limits = &self.limits;
        let positive = [
            ("read_timeout_ms", limits.read_timeout_ms as usize),
            ("reserve_timeout_ms", limits.reserve_timeout_ms as usize),
            ("write_timeout_ms", limits.write_timeout_ms as usize),
            ("max_in_flight", limits.max_in_flight),
            ("max_ingest_in_flight", limits.max_ingest_in_flight),
            ("max_connections", limits.max_connections),
            ("header_timeout_ms", limits.header_timeout_ms as usize),
            ("events_body_bytes", limits.events_body_bytes),
            ("events_per_request", limits.events_per_request),
            ("rules_body_bytes", limits.rules_body_bytes),
            ("body_bytes", limits.body_bytes),
        ];
        for (name, value) in positive {
            if value == 0 {
                problems.push(format!("serve.limits.{name} = 0: must be more than 0"));
            }
        }
        if limits.lanes >= sellable_core::lane::MOST {
            problems.push(format!("serve.limits.lanes = {}: at most {} (0: one per core)", limits.lanes, sellable_core::lane::MOST - 1));
        }
        if self.hosts.is_empty() {
            problems.push("serve.hosts is empty: no request could be answered (\"*\" takes any host)".to_string());
        }
        problems
    }
}

/// A key as the door checks it.
pub struct Key {
    pub name: String,
    pub scopes: Vec<Scope>,
    digest: [u8; 32],
    /// The text last presented that matched the digest (kept in memory only): the next request
    /// with it is compared with it in constant time instead of being hashed again.
    seen: std::sync::RwLock<Option<Box<[u8]>>>,
}

/// The configured keys, as digests: what a presented key is checked against (the REST door and
/// the Flight SQL server).
pub struct KeyRing {
    keys: Vec<Key>,
}

impl KeyRing {
    /// The keys of `entries` (checked with [`DoorConfig::problems`] first: a digest that is not
    /// SHA-256 is skipped).
    pub fn new(entries: &[KeyEntry]) -> KeyRing {
        let keys = entries
            .iter()
            .filter_map(|key| Some(Key { name: key.name.clone(), scopes: key.scopes.clone(), digest: unhex(&key.sha256)?, seen: Default::default() }))
            .collect();
        KeyRing { keys }
    }

    /// The key `presented` is: compared in constant time with every key's text seen before, else
    /// hashed and compared with every configured digest in constant time.
    pub fn find(&self, presented: &str) -> Option<&Key> {
        let presented = presented.as_bytes();
        let mut found = None;
        for key in &self.keys {
            let seen = key.seen.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.as_deref().is_some_and(|seen| bool::from(seen.ct_eq(presented))) {
                found = Some(key);
            }
        }
        if found.is_some() {
            return found;
        }
        let digest: [u8; 32] = Sha256::digest(presented).into();
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        if let Some(key) = found {
            *key.seen.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(presented.into());
        }
        found
    }
}

type RateLimiter = governor::DefaultKeyedRateLimiter<String>;

/// The door's state, shared by every request.
pub struct Door {
    config: Arc<DoorConfig>,
    keys: KeyRing,
    /// The allowed hosts, lower case; none: any.
    hosts: Option<Vec<String>>,
    rate: Option<RateLimiter>,
    in_flight: Arc<tokio::sync::Semaphore>,
    ingest_in_flight: Arc<tokio::sync::Semaphore>,
    refused: prometheus::IntCounterVec,
}

impl Door {
    /// The door of `config` (checked with [`DoorConfig::problems`] first), counting what it
    /// refuses in `refused` (by reason). [`crate::Serving::door`] gives it the server's counter.
    pub fn new(config: &DoorConfig, refused: prometheus::IntCounterVec) -> Result<Door, String> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let keys = KeyRing::new(&config.keys);
        let rate = std::num::NonZeroU32::new(config.limits.rate_per_key).map(|rate| governor::RateLimiter::keyed(governor::Quota::per_second(rate)));
        let hosts = (!config.hosts.iter().any(|host| host == "*")).then(|| config.hosts.iter().map(|host| host.to_ascii_lowercase()).collect());
        Ok(Door {
            config: Arc::new(config.clone()),
            keys,
            hosts,
            rate,
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.limits.max_in_flight)),
            ingest_in_flight: Arc::new(tokio::sync::Semaphore::new(config.limits.max_ingest_in_flight)),
            refused,
        })
    }

    pub fn config(&self) -> &Arc<DoorConfig> {
        &self.config
    }

    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    fn refuse(&self, reason: &'static str, error: ApiError) -> Response {
        self.refused.with_label_values(&[reason]).inc();
        error.into_response()
    }

    /// Whether the `Host` header names this server.
    fn host_ok(&self, headers: &HeaderMap) -> bool {
        let Some(hosts) = &self.hosts else { return true };
        let Some(host) = headers.get(header::HOST).and_then(|value| value.to_str().ok()) else { return false };
        let host = host.to_ascii_lowercase();
        // the port goes (an IPv6 literal keeps its brackets)
        let name = match host.rfind(':') {
            Some(colon) if !host[colon..].contains(']') => &host[..colon],
            _ => host.as_str(),
        };
        hosts.iter().any(|allowed| allowed == name)
    }

    /// The key of `Authorization: Bearer KEY`, compared with every configured digest.
    fn key(&self, headers: &HeaderMap) -> Result<&Key, ApiError> {
        let value = headers.get(header::AUTHORIZATION).ok_or_else(|| ApiError::Unauthorized("this route needs an API key: send `Authorization: Bearer KEY`".to_string()))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be `Bearer KEY`".to_string()))?;
        self.keys.find(token).ok_or_else(|| ApiError::Unauthorized("the API key is not known".to_string()))
    }

    fn timeout(&self, scope: Scope) -> Duration {
        Duration::from_millis(match scope {
            Scope::Read => self.config.limits.read_timeout_ms,
            Scope::Reserve => self.config.limits.reserve_timeout_ms,
            Scope::Ingest | Scope::Admin => self.config.limits.write_timeout_ms,
        })
    }
}

/// The media types a route's body may have.
fn media_types(path: &str) -> &'static [&'static str] {
    match path {
        "/v1/events" => &["application/json", "application/x-ndjson"],
        "/v1/rules:check" => &["text/plain"],
        _ => &["application/json"],
    }
}

/// Whether the request carries a body (a length above 0, or a chunked one).
fn has_body(headers: &HeaderMap) -> bool {
    let length = headers.get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()).and_then(|value| value.parse::<u64>().ok());
    length.is_some_and(|length| length > 0) || headers.contains_key(header::TRANSFER_ENCODING)
}

/// The largest body of a route, in bytes.
pub fn body_limit(limits: &Limits, path: &str) -> usize {
    match path {
        "/v1/events" => limits.events_body_bytes,
        "/v1/rules:check" => limits.rules_body_bytes,
        _ => limits.body_bytes,
    }
}

/// A 503 or 429 that tells when to come back.
fn retry_after(error: ApiError, seconds: u64) -> Response {
    let mut response = error.into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

/// The door, as a middleware (see the module's documentation for the order of the checks).
pub async fn guard(State(door): State<Arc<Door>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if !door.host_ok(headers) {
        let host = headers.get(header::HOST).map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned()).unwrap_or_default();
        return door.refuse("host", ApiError::BadRequest(format!("the Host header {host:?} does not name this server")));
    }
    let path = request.uri().path().to_string();
    let scope = scope_of(request.method(), &path);
    let open = door.config.open.contains(&path);
    if !open {
        let key = match door.key(headers) {
            Ok(key) => key,
            Err(error) => return door.refuse("key", error),
        };
        tracing::Span::current().record("key", key.name.as_str());
        if !key.scopes.contains(&scope) {
            let error = ApiError::Forbidden(format!("the key '{}' lacks the scope '{}' that {} {path} needs", key.name, scope.as_str(), request.method()));
            return door.refuse("scope", error);
        }
        if let Some(Err(not_until)) = door.rate.as_ref().map(|rate| rate.check_key(&key.name)) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            let error = ApiError::TooManyRequests(format!("the key '{}' is past its {} requests per second", key.name, door.config.limits.rate_per_key));
            door.refused.with_label_values(&["rate"]).inc();
            return retry_after(error, wait.as_secs_f64().ceil() as u64);
        }
    }
    if has_body(headers) {
        let allowed = media_types(&path);
        let given = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
        let essence = given.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if !allowed.contains(&essence.as_str()) {
            let error = ApiError::UnsupportedMediaType(format!("{path} takes a body of type {}, got {:?}", allowed.join(" or "), given));
            return door.refuse("media_type", error);
        }
    }
    // open paths (health, metrics) are answered whatever the load
    let mut permits = Vec::new();
    if !open {
        let mut places = vec![(&door.in_flight, door.config.limits.max_in_flight, "requests")];
        if scope == Scope::Ingest {
            places.push((&door.ingest_in_flight, door.config.limits.max_ingest_in_flight, "event posts"));
        }
        for (place, most, what) in places {
            match place.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => {
                    door.refused.with_label_values(&["overloaded"]).inc();
                    return retry_after(ApiError::Overloaded(format!("{most} {what} are in flight; try again shortly")), 1);
                }
            }
        }
    }
    let limit = door.timeout(scope);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            door.refused.with_label_values(&["timeout"]).inc();
            retry_after(ApiError::Overloaded(format!("no answer within {} ms; nothing more is done for this request", limit.as_millis())), 1)
        }
    }
}

/// The lanes [`Limits::lanes`] asks for: one per core when it is 0.
pub fn lane_count(limits: &Limits) -> usize {
    match limits.lanes {
        0 => std::thread::available_parallelism().map_or(1, usize::from).min(sellable_core::lane::MOST - 1),
        lanes => lanes,
    }
}

/// `lanes` listening sockets on `address`, all on one port (`SO_REUSEPORT`: the kernel spreads
/// new connections among them), for [`serve_lanes`]; port 0 takes a free one for all. Called
/// within a tokio runtime.
pub fn bind_lanes(address: std::net::SocketAddr, lanes: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    // a port another process listens on is refused here, as a plain bind refuses it: with
    // SO_REUSEPORT alone, two servers of one user would share it
    if address.port() != 0 {
        drop(std::net::TcpListener::bind(address)?);
    }
    let mut address = address;
    let mut listeners = Vec::with_capacity(lanes);
    for _ in 0..lanes.max(1) {
        let socket = if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(address)?;
        address = socket.local_addr()?;
        // registered with this runtime to listen, then let go of for the lane's runtime
        listeners.push(socket.listen(1024)?.into_std()?);
    }
    Ok(listeners)
}

/// Serves `router` (HTTP/1.1) on `listeners` ([`bind_lanes`]), each in a lane of its own
/// ([`sellable_core::lane`]): a thread with a single-threaded runtime that accepts its
/// connections and reads, decides and answers their requests. At most
/// [`Limits::max_connections`] connections are open over all lanes (past it, new ones wait in the
/// listen backlog), each closed when a request's header is not complete within
/// [`Limits::header_timeout_ms`] (idle keep-alive connections included). Returns once `shutdown`
/// resolves and every lane has finished its requests in flight, or once a lane fails (the others
/// are stopped first and finish theirs).
pub async fn serve_lanes(
    listeners: Vec<std::net::TcpListener>,
    router: axum::Router,
    limits: &Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let header_timeout = Duration::from_millis(limits.header_timeout_ms);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (ended, mut ends) = tokio::sync::mpsc::unbounded_channel();
    let lanes = listeners.len();
    for (index, listener) in listeners.into_iter().enumerate() {
        let (router, slots, mut stopped, ended) = (router.clone(), slots.clone(), stopped.clone(), ended.clone());
        let lane = index + 1;
        // the stack the main runtime's threads have, which answered requests before lanes did
        let started = std::thread::Builder::new().name(format!("lane-{lane}")).stack_size(8 << 20).spawn(move || {
            sellable_core::lane::enter(lane);
            let served = tokio::runtime::Builder::new_current_thread().enable_all().build().and_then(|runtime| {
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let stopped = async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    };
                    accept(listener, router, slots, header_timeout, stopped).await
                })
            });
            let _ = ended.send((lane, served));
        });
        if let Err(error) = started {
            let _ = stop.send(true);
            return Err(error);
        }
    }
    drop(ended);
    // a lane that ends before the shutdown stops the others
    let mut first = tokio::select! {
        () = shutdown => None,
        Some(end) = ends.recv() => Some(end),
    };
    let _ = stop.send(true);
    let mut result = Ok(());
    for _ in 0..lanes {
        let end = match first.take() {
            Some(end) => Some(end),
            None => ends.recv().await,
        };
        let Some((lane, served)) = end else { return Err(std::io::Error::other("a lane ended without saying how (it panicked)")) };
        if let (Ok(()), Err(error)) = (&result, served) {
            result = Err(std::io::Error::other(format!("lane {lane}: {error}")));
        }
    }
    result
}

/// The connection loop of each lane of [`serve_lanes`], taking a place among `slots` per
/// connection.
async fn accept(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    slots: Arc<tokio::sync::Semaphore>,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // out of file descriptors and the like: wait a little instead of spinning
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Error answers in the JSON error body whoever made them: the framework's own (an unknown path,
/// a wrong method, a body too large, a query that does not parse) are plain text, and are
/// rewritten here with their status and message.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let json = response.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).is_some_and(|value| value.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 << 10).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        text => text.to_string(),
    };
    let code = match status.as_u16() {
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        413 => "too_large",
        415 => "unsupported_media_type",
        429 => "too_many_requests",
        500..=599 => "internal",
        _ => "bad_request",
    };
    let mut rewritten = (status, axum::Json(serde_json::json!({ "error": code, "message": message }))).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_by_route() {
        assert_eq!(scope_of(&Method::GET, "/v1/availability/SKU-1"), Scope::Read);
        assert_eq!(scope_of(&Method::POST, "/v1/availability:batch"), Scope::Read);
        assert_eq!(scope_of(&Method::POST, "/v1/events"), Scope::Ingest);
        assert_eq!(scope_of(&Method::DELETE, "/v1/reservations/r1"), Scope::Reserve);
        assert_eq!(scope_of(&Method::POST, "/v1/rules:check"), Scope::Admin);
        assert_eq!(scope_of(&Method::GET, "/v1/rules"), Scope::Read);
        assert_eq!(scope_of(&Method::GET, "/nowhere"), Scope::Read);
    }

    #[test]
    fn a_generated_key_matches_its_digest_and_bad_entries_are_named() {
        let (key, entry) = KeyEntry::generate("shop", vec![Scope::Read]);
        assert!(key.starts_with(KEY_PREFIX) && key.len() == KEY_PREFIX.len() + 64);
        assert_eq!(entry.sha256, digest(&key));
        assert_ne!(KeyEntry::generate("shop", vec![Scope::Read]).0, key, "keys are random");
        let config = DoorConfig { keys: vec![entry.clone(), entry.clone(), KeyEntry { name: "x".into(), scopes: vec![], sha256: "zz".into() }], ..DoorConfig::default() };
        let problems = config.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("\"shop\"") && problems[1].contains("serve.keys[x].sha256") && problems[2].contains("serve.keys[x].scopes"), "{problems:?}");
    }

    #[test]
    fn a_key_is_found_again_from_its_text_seen_and_no_other_text_finds_it() {
        let (shop, shop_entry) = KeyEntry::generate("shop", vec![Scope::Read]);
        let (admin, admin_entry) = KeyEntry::generate("admin", vec![Scope::Admin]);
        let ring = KeyRing::new(&[shop_entry, admin_entry]);
        for _ in 0..2 {
            assert_eq!(ring.find(&shop).map(|key| key.name.as_str()), Some("shop"));
            assert_eq!(ring.find(&admin).map(|key| key.name.as_str()), Some("admin"));
        }
        // the same length, one character apart; a prefix; a longer text
        let mut near = shop.clone().into_bytes();
        *near.last_mut().unwrap() ^= 1;
        for wrong in [String::from_utf8(near).unwrap(), shop[..shop.len() - 1].to_string(), format!("{shop}0"), String::new()] {
            assert!(ring.find(&wrong).is_none(), "{wrong:?} is no key");
        }
        assert_eq!(ring.find(&shop).map(|key| key.name.as_str()), Some("shop"), "a wrong text does not displace the one seen");
    }

    #[test]
    fn hosts_are_matched_without_their_port() {
        let refused = prometheus::IntCounterVec::new(prometheus::Opts::new("refused", "refused"), &["reason"]).unwrap();
        let door = Door::new(&DoorConfig::default(), refused).unwrap();
        let with = |host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            door.host_ok(&headers)
        };
        assert!(with("127.0.0.1:8080") && with("localhost") && with("[::1]:80") && with("LOCALHOST:1"));
        assert!(!with("evil.example:8080") && !with("127.0.0.2"));
        assert!(!door.host_ok(&HeaderMap::new()), "no Host header: refused");
    }
}
