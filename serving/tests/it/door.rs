//! The door of the REST API, as `sellable serve` runs it (keys, scopes, hosts, media types,
//! limits, timeouts, the connection loop), walked over every route of the OpenAPI document.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sellable_dsl::Schema;
use sellable_serving::door::{self, DoorConfig, KeyEntry, Limits, Scope};
use sellable_serving::{ModelBook, RuleBook, Serving};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{serving, serving_over, FakeSpeed, Mode, CUTOFF};

/// One key per scope, and the door's configuration holding them.
struct Keys {
    by_scope: Vec<(Scope, String)>,
    config: DoorConfig,
}

fn keys(limits: Limits) -> Keys {
    let mut by_scope = Vec::new();
    let mut entries = Vec::new();
    for scope in Scope::ALL {
        let (key, entry) = KeyEntry::generate(scope.as_str(), vec![scope]);
        by_scope.push((scope, key));
        entries.push(entry);
    }
    Keys { by_scope, config: DoorConfig { keys: entries, limits, ..DoorConfig::default() } }
}

impl Keys {
    fn of(&self, scope: Scope) -> &str {
        &self.by_scope.iter().find(|(s, _)| *s == scope).unwrap().1
    }
}

/// Serves `serving` behind the door of `config` with the connection loop of `sellable serve`, in
/// two lanes.
async fn serve_guarded(serving: Arc<Serving>, config: &DoorConfig) -> String {
    let door = Arc::new(serving.door(config).unwrap());
    let limits = door.limits().clone();
    let router = serving.guarded(door);
    let listeners = door::bind_lanes("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let address = listeners[0].local_addr().unwrap();
    tokio::spawn(async move { door::serve_lanes(listeners, router, &limits, std::future::pending()).await.unwrap() });
    format!("http://{address}")
}

/// The lanes of `sellable serve` listen on one port and share its connections: each request is
/// answered on a lane's thread, and both lanes answer some. Asked to stop, the server ends and
/// the port is closed. A second server on the port is refused.
#[tokio::test]
async fn lanes_share_one_port_and_stop_when_asked() {
    let router = axum::Router::new().route("/lane", axum::routing::get(|| async { sellable_core::lane::current().to_string() }));
    let listeners = door::bind_lanes("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let address = listeners[0].local_addr().unwrap();
    assert!(listeners.iter().all(|listener| listener.local_addr().unwrap() == address));
    assert!(door::bind_lanes(address, 2).is_err(), "a port in use is refused, not shared");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        door::serve_lanes(listeners, router, &Limits::default(), stopped).await
    });
    let mut lanes = std::collections::BTreeSet::new();
    for _ in 0..32 {
        // a client of its own: a connection of its own
        let response = reqwest::Client::new().get(format!("http://{address}/lane")).send().await.unwrap();
        lanes.insert(response.text().await.unwrap());
    }
    assert_eq!(lanes.into_iter().collect::<Vec<_>>(), ["1", "2"], "32 connections, two lanes, each answering some");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("the lanes stop").unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(address).await.is_err(), "no lane listens after the stop");
}

fn plain_serving() -> Arc<Serving> {
    serving(Arc::new(RuleBook::empty(Schema::standard())), Arc::new(ModelBook::none()))
}

/// A request: method, path (with its query), and a body with its media type.
type Operation = (reqwest::Method, String, Option<(&'static str, String)>);

/// Every operation of the document, its path parameters filled, with a body where it takes one.
fn operations() -> Vec<Operation> {
    let document = serde_json::to_value(sellable_serving::openapi::build(None)).unwrap();
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            let path = path.replace("{sku}", "SKU-1").replace("{id}", "r0000000000000001");
            let query = match path.as_str() {
                p if p.starts_with("/v1/availability/") => "?region=DE",
                p if p.starts_with("/v1/features/") => "?node=WH-1",
                _ => "",
            };
            let body = match (method.as_str(), path.as_str()) {
                ("post", "/v1/events") => Some(("application/x-ndjson", String::new() + "{}")),
                ("post", "/v1/rules:check") => Some(("text/plain", "rule \"r\" when qty > 1000 then deny \"no\"\n".to_string())),
                ("post", "/v1/availability:batch") => Some(("application/json", r#"{"items":[{"sku":"SKU-1","region":"DE"}]}"#.to_string())),
                ("post", "/v1/reservations") => Some(("application/json", r#"{"order_id":"o1","lines":[{"sku":"SKU-1","qty":1,"region":"DE"}]}"#.to_string())),
                _ => None,
            };
            operations.push((method.to_uppercase().parse().unwrap(), format!("{path}{query}"), body));
        }
    }
    operations
}

async fn send(client: &reqwest::Client, base: &str, (method, path, body): &Operation, key: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = client.request(method.clone(), format!("{base}{path}"));
    if let Some((media, text)) = body {
        request = request.header("content-type", *media).body(text.clone());
    }
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// Every route of the document: 401 without a key (or with an unknown one), 403 with a key of
/// another scope, and past the door with its own; the open paths answer without a key.
#[tokio::test]
async fn every_route_needs_a_key_with_its_scope() {
    let keys = keys(Limits::default());
    let base = serve_guarded(plain_serving(), &keys.config).await;
    let client = reqwest::Client::new();
    let operations = operations();
    assert!(operations.len() >= 18, "{operations:?}");
    for operation in &operations {
        let (method, path, _) = operation;
        let bare = path.split('?').next().unwrap();
        if keys.config.open.iter().any(|open| open == bare) {
            let (status, body) = send(&client, &base, operation, None).await;
            assert!(status == 200 || (bare == "/readyz" && status == 503), "{method} {path}: {status} {body}");
            continue;
        }
        let (status, body) = send(&client, &base, operation, None).await;
        assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "{method} {path} without a key: {body}");
        let (status, body) = send(&client, &base, operation, Some("sk_not-a-key")).await;
        assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "{method} {path} with an unknown key: {body}");
        let needed = door::scope_of(method, bare);
        for scope in Scope::ALL {
            let (status, body) = send(&client, &base, operation, Some(keys.of(scope))).await;
            if scope == needed {
                assert!(status != 401 && status != 403 && status != 415, "{method} {path} with its scope: {status} {body}");
            } else {
                assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")), "{method} {path} with {scope:?}: {body}");
                assert!(body["message"].as_str().unwrap().contains(needed.as_str()), "{body}");
            }
        }
    }
}

/// A write in `text/plain` (what a page of another site may post without asking) and a request
/// naming another host (DNS rebinding) are refused before any handler.
#[tokio::test]
async fn a_plain_text_write_and_a_foreign_host_are_refused() {
    let keys = keys(Limits::default());
    let base = serve_guarded(plain_serving(), &keys.config).await;
    let client = reqwest::Client::new();
    let event = r#"{"event_id":"x","ts":1000,"sku":"SKU-1","node":"WH-1","kind":"receipt","qty":1000000}"#;
    for media in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let response = client.post(format!("{base}/v1/events")).bearer_auth(keys.of(Scope::Ingest)).header("content-type", media).body(event).send().await.unwrap();
        assert_eq!(response.status(), 415, "{media}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unsupported_media_type", "{body}");
    }
    let response = client.get(format!("{base}/v1/availability/SKU-1?region=DE")).bearer_auth(keys.of(Scope::Read)).header("host", "evil.example").send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("evil.example"), "{body}");
    let response = client.get(format!("{base}/healthz")).header("host", "evil.example:80").send().await.unwrap();
    assert_eq!(response.status(), 400, "open paths check the host too");
    // the same requests, named right, pass
    let response = client.get(format!("{base}/v1/availability/SKU-1?region=DE")).bearer_auth(keys.of(Scope::Read)).header("host", "localhost").send().await.unwrap();
    assert_eq!(response.status(), 200);
}

/// Errors the framework makes (unknown path, wrong method, a query or body that does not parse,
/// a body too large) are the JSON error body too.
#[tokio::test]
async fn framework_errors_are_json() {
    let keys = keys(Limits { body_bytes: 1_000, ..Limits::default() });
    let base = serve_guarded(plain_serving(), &keys.config).await;
    let client = reqwest::Client::new();
    let read = keys.of(Scope::Read);
    let cases = [
        (client.get(format!("{base}/v1/nowhere")), 404, "not_found"),
        (client.put(format!("{base}/v1/availability/SKU-1")), 405, "method_not_allowed"),
        (client.get(format!("{base}/v1/features/SKU-1?qty=1")), 400, "bad_request"),
        (client.get(format!("{base}/v1/features/SKU-1?node=WH-1&qty=lots")), 400, "bad_request"),
        (client.post(format!("{base}/v1/availability:batch")).header("content-type", "application/json").body("{\"items\": ["), 400, "bad_request"),
        (client.post(format!("{base}/v1/availability:batch")).header("content-type", "application/json").body(format!("{{\"items\": [{}]}}", "0,".repeat(1_000))), 413, "too_large"),
    ];
    for (request, status, code) in cases {
        let response = request.bearer_auth(read).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], code, "{body}");
        assert!(!body["message"].as_str().unwrap().is_empty(), "{body}");
    }
}

/// Asks `GET /v1/availability` `count` times in a row: every answer a 200, each within `bound`.
async fn normal_client(base: String, key: String, count: usize, bound: Duration) {
    let client = reqwest::Client::new();
    for _ in 0..count {
        let started = Instant::now();
        let response = client.get(format!("{base}/v1/availability/SKU-1?region=DE")).bearer_auth(&key).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(started.elapsed() < bound, "a normal request took {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Each body limit answers a clear 413 (or 400) while another client keeps its answers: rule files,
/// batches and events past their sizes, events past their count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_a_clear_error_while_others_are_answered() {
    let limits = Limits { rules_body_bytes: 64 << 10, events_per_request: 100, ..Limits::default() };
    let keys = keys(limits.clone());
    let base = serve_guarded(plain_serving(), &keys.config).await;
    let normal = tokio::spawn(normal_client(base.clone(), keys.of(Scope::Read).to_string(), 40, Duration::from_millis(400)));
    let client = reqwest::Client::new();
    let admin = keys.of(Scope::Admin);
    let ingest = keys.of(Scope::Ingest);
    for _ in 0..4 {
        let rules = "rule \"r\" when qty > 1 then deny \"x\"\n".repeat(4_000);
        let response = client.post(format!("{base}/v1/rules:check")).bearer_auth(admin).header("content-type", "text/plain").body(rules).send().await.unwrap();
        assert_eq!(response.status(), 413);
        let batch = serde_json::json!({ "items": vec![serde_json::json!({"sku": "SKU-1", "region": "DE"}); 201] });
        let response = client.post(format!("{base}/v1/availability:batch")).bearer_auth(keys.of(Scope::Read)).json(&batch).send().await.unwrap();
        assert_eq!(response.status(), 400, "a batch past 200 items");
        let lines = "{}\n".repeat(101);
        let response = client.post(format!("{base}/v1/events")).bearer_auth(ingest).header("content-type", "application/x-ndjson").body(lines).send().await.unwrap();
        assert_eq!(response.status(), 413, "events past their count");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains("at most 100 events"), "{body}");
        let array = format!("[{}{{}}]", "{},".repeat(100));
        let response = client.post(format!("{base}/v1/events")).bearer_auth(ingest).header("content-type", "application/json").body(array).send().await.unwrap();
        assert_eq!(response.status(), 413, "an array past the count");
        let junk = "not an event\n".repeat(50);
        let response = client.post(format!("{base}/v1/events")).bearer_auth(ingest).header("content-type", "application/x-ndjson").body(junk).send().await.unwrap();
        assert_eq!(response.status(), 400, "a body that is neither JSON nor NDJSON");
        let huge = "x".repeat(limits.events_body_bytes + 1);
        let response = client.post(format!("{base}/v1/events")).bearer_auth(ingest).header("content-type", "application/x-ndjson").body(huge).send().await.unwrap();
        assert_eq!(response.status(), 413);
    }
    // a dozen rule files just under the limit checked at once: parsed off the request threads
    let rules = "rule \"r\" when qty > 1 then deny \"x\"\n".repeat(1_700);
    assert!(rules.len() < limits.rules_body_bytes);
    let checks: Vec<_> = (0..12)
        .map(|_| {
            let (client, base, admin, rules) = (client.clone(), base.clone(), admin.to_string(), rules.clone());
            tokio::spawn(async move { client.post(format!("{base}/v1/rules:check")).bearer_auth(admin).header("content-type", "text/plain").body(rules).send().await.unwrap().status() })
        })
        .collect();
    for check in checks {
        assert_eq!(check.await.unwrap(), 200);
    }
    normal.await.unwrap();
}

/// Past its rate a key gets 429 with `Retry-After`; another key is not slowed.
#[tokio::test]
async fn a_key_past_its_rate_gets_429_and_others_do_not() {
    let keys = keys(Limits { rate_per_key: 5, ..Limits::default() });
    let base = serve_guarded(plain_serving(), &keys.config).await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let response = client.get(format!("{base}/v1/model")).bearer_auth(keys.of(Scope::Read)).send().await.unwrap();
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
        }
        statuses.push(response.status().as_u16());
    }
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    assert!((5..=7).contains(&allowed) && statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    let response = client.get(format!("{base}/v1/reservations/r1")).bearer_auth(keys.of(Scope::Reserve)).send().await.unwrap();
    assert_ne!(response.status(), 429, "another key has its own rate");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let response = client.get(format!("{base}/v1/model")).bearer_auth(keys.of(Scope::Read)).send().await.unwrap();
    assert_eq!(response.status(), 200, "the rate refills");
}

/// A store that hangs: each request ends at the read timeout with a 503 and `Retry-After`;
/// past the requests in flight, new ones are shed at once; the open `/healthz` answers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_time_out_and_past_the_limit_requests_are_shed() {
    let speed = Arc::new(FakeSpeed::new(Mode::Hanging, None));
    speed.breaks();
    // the store is waited for longer than the door's read timeout
    let waits = sellable_serving::grading::Limits { speed_timeout: Duration::from_secs(30), ..Default::default() };
    let serving = serving_over(speed, 60_000, Arc::new(RuleBook::empty(Schema::standard()))).with_limits(waits);
    let serving = Arc::new(serving.with_clock(sellable_serving::Clock::Fixed(CUTOFF)));
    let keys = keys(Limits { read_timeout_ms: 2_000, max_in_flight: 2, ..Limits::default() });
    let base = serve_guarded(serving, &keys.config).await;
    let key = keys.of(Scope::Read).to_string();
    let hanging: Vec<_> = (0..2)
        .map(|_| {
            let (base, key) = (base.clone(), key.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let response = reqwest::Client::new().get(format!("{base}/v1/availability/SKU-1?region=DE")).bearer_auth(key).send().await.unwrap();
                (response.status().as_u16(), response.headers().contains_key("retry-after"), started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = reqwest::Client::new();
    let response = client.get(format!("{base}/v1/model")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(response.status(), 503, "shed while two requests are in flight");
    assert!(response.headers().contains_key("retry-after"));
    assert!(hanging.iter().all(|task| !task.is_finished()), "shed at once, not queued behind the requests in flight");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "overloaded", "{body}");
    assert_eq!(client.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    for task in hanging {
        let (status, retry, took) = task.await.unwrap();
        assert_eq!((status, retry), (503, true));
        assert!(took >= Duration::from_millis(2_000) && took < Duration::from_secs(10), "{took:?}");
    }
    assert_eq!(client.get(format!("{base}/v1/model")).bearer_auth(&key).send().await.unwrap().status(), 200, "places free again");
}

/// A client that sends half a header is cut off at the header timeout, an idle keep-alive
/// connection too; a flood of connections past the cap waits in the backlog while the idle ones
/// are closed, and a normal client is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_a_connection_flood_does_not_starve_others() {
    let keys = keys(Limits { header_timeout_ms: 300, max_connections: 16, read_timeout_ms: 300, ..Limits::default() });
    let base = serve_guarded(plain_serving(), &keys.config).await;
    let address = base.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buffer)).await.expect("the server closes a slow header");
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    drop(read);
    // a whole header, then a body that stops half-way: answered at the route's timeout
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /v1/availability:batch HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"items\": [",
        keys.of(Scope::Read)
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await.expect("the server answers a slow body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("retry-after"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    // 64 connections that never send anything, four times the cap
    let mut flood = Vec::new();
    for _ in 0..64 {
        flood.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    let started = Instant::now();
    normal_client(base.clone(), keys.of(Scope::Read).to_string(), 3, Duration::from_secs(3)).await;
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    drop(flood);
}
