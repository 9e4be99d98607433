//! Checkout against real Redis (a single server and a 3-master cluster): carts reserved all or
//! nothing under concurrency never hold more than was promisable, retries get the first answer,
//! holds expire by themselves, and the contract of every endpoint.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use sellable_core::holds::HoldStore;
use sellable_serving::reservations::{Reservation, Status};
use sellable_serving::Serving;
use sellable_speed::holds::RedisHolds;

use super::*;

/// The marketplace served as of an hour after its cutoff, with its reservations in Redis at `url`
/// under a namespace of this run (the last value), and its speed view embedded, or `in_redis`
/// beside the reservations (a namespace under theirs): then a reservation reads its SKU and its
/// count of confirmations in one round trip.
async fn shop(market: &Marketplace, url: &str, in_redis: bool) -> (String, Arc<Serving>, Arc<SpeedView>, Arc<RedisHolds>, String) {
    let namespace = format!("checkout-{}-{}", std::process::id(), chrono_now());
    let speed = Arc::new(match in_redis {
        true => SpeedView::redis(url, &format!("{namespace}-speed"), FoldConfig::default()).await.unwrap(),
        false => SpeedView::memory(FoldConfig::default()),
    });
    catch_up(&market.lake, &speed, market.cutoff, CatchUpSource::Log, None).await.unwrap();
    let nodes = market.lake.load_nodes().await.unwrap();
    let batch = publish(&market.lake, &speed).await;
    let rules = Arc::new(sellable_serving::RuleBook::empty(sellable_dsl::Schema::standard()));
    let holds = Arc::new(RedisHolds::connect(url, &namespace).await.unwrap());
    // a loaded test machine may take longer than serving's 50 ms to answer a read: each answer
    // here is to be a 201 or a 409, not a refusal for a slow read
    let limits = sellable_serving::grading::Limits { speed_timeout: Duration::from_secs(5), ..Default::default() };
    let serving = Serving::new(nodes, batch, speed.clone(), rules)
        .with_holds(holds.clone())
        .with_limits(limits)
        .with_clock(sellable_serving::Clock::Fixed(market.cutoff + 3_600_000));
    let serving = Arc::new(serving);
    serving.refresh_watermarks().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = serving.clone().router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (base, serving, speed, holds, namespace)
}

/// SKUs with a few promisable units in a country: (sku, country) → units per node, as answered
/// before any reservation.
async fn scarce(serving: &Serving, market: &Marketplace, count: usize) -> BTreeMap<(String, String), BTreeMap<String, i64>> {
    let (_, nodes) = market.lake.load_catalog().await.unwrap();
    let oracle = fold(&market.all_events, FoldConfig::default());
    let mut found = BTreeMap::new();
    for (sku, country) in sellable_bench::stocked_requests(&oracle, &nodes, 400) {
        let answer = serving.availability(&sku, &country, 1, serving.now()).await.unwrap();
        if (2..=12).contains(&answer.available) && !found.keys().any(|(known, _): &(String, String)| *known == sku) {
            found.insert((sku, country), answer.options.iter().map(|option| (option.node.clone(), option.units)).collect());
        }
        if found.len() == count {
            break;
        }
    }
    assert_eq!(found.len(), count, "not enough scarce SKUs");
    found
}

async fn post(client: &reqwest::Client, url: String, body: serde_json::Value, key: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = client.post(url).json(&body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Thousands of concurrent carts (with retries of a key, releases, confirmations and expiries)
/// over a few scarce SKUs: at every check the units held plus the units confirmed never exceed
/// what was promisable at any node, every answer is a 201 or a 409, a key's answers all name the
/// same reservation and the same units, the confirmed units are `reserve` events in the speed
/// view, and once the TTLs have passed nothing is held. The speed view is embedded, or `in_redis`
/// beside the reservations.
async fn no_oversell(url: &str, in_redis: bool) {
    let market = marketplace().await;
    let (base, serving, speed, holds, namespace) = shop(&market, url, in_redis).await;
    let promisable = Arc::new(scarce(&serving, &market, 12).await);
    let mut reserved_before: HashMap<(String, String), i64> = HashMap::new();
    for ((sku, _), nodes) in promisable.iter() {
        for node in nodes.keys() {
            reserved_before.insert((sku.clone(), node.clone()), speed_reserved(&speed, sku, node).await);
        }
    }
    if in_redis {
        // one cart first, watched: its count of confirmations and its SKU are read in one round
        // trip, one after the other on one connection
        let ((sku, country), _) = promisable.iter().next().unwrap();
        let client = reqwest::Client::new();
        let cart = serde_json::json!({ "lines": [{ "sku": sku, "region": country, "qty": 1 }], "ttl_s": 10 });
        let ((status, body), ran) = monitored(url, &namespace, post(&client, format!("{base}/v1/reservations"), cart, Some("watched"))).await;
        assert_eq!(status, 201, "{body}");
        let count = ran.iter().position(|line| line.contains("\"#confirms\"")).unwrap_or_else(|| panic!("the count is read: {ran:#?}"));
        let client_of = |line: &str| line.split_once('[').and_then(|(_, rest)| rest.split_once(']')).map(|(client, _)| client.to_string());
        let next = ran[count + 1..].iter().find(|line| client_of(line) == client_of(&ran[count]));
        assert!(next.is_some_and(|line| line.contains("\"HGET\"") && line.contains(":states\"") && line.contains(&format!("\"{sku}\""))), "the SKU is read next on the count's connection: {ran:#?}");
        let released = client.delete(format!("{base}/v1/reservations/{}", body["id"].as_str().unwrap())).send().await.unwrap();
        assert_eq!(released.status(), 200);
    }
    let confirmed: Arc<Mutex<HashMap<(String, String), i64>>> = Arc::default();
    let answers: Arc<Mutex<HashMap<String, (String, serde_json::Value)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // the checker: held + confirmed ≤ promisable, at every node, all along
    let checker = {
        let (holds, promisable, confirmed, stop) = (holds.clone(), promisable.clone(), confirmed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut checks = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for ((sku, _), nodes) in promisable.iter() {
                    // confirmed first: a confirmation releases its holds before it is counted here
                    let confirmed = confirmed.lock().unwrap().clone();
                    let held: HashMap<String, i64> = holds.held(sku).await.unwrap().into_iter().collect();
                    for (node, units) in nodes {
                        let (held, done) = (held.get(node).copied().unwrap_or(0), confirmed.get(&(sku.clone(), node.clone())).copied().unwrap_or(0));
                        assert!(held + done <= *units, "{sku} at {node}: {held} held + {done} confirmed > {units} promisable");
                    }
                    assert!(held.keys().all(|node| nodes.contains_key(node)), "{sku}: held at a node that promised nothing: {held:?}");
                }
                checks += 1;
            }
            checks
        })
    };
    let mut tasks = Vec::new();
    for task in 0..24u64 {
        let (base, promisable, confirmed, answers) = (base.clone(), promisable.clone(), confirmed.clone(), answers.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(task);
            let items: Vec<&(String, String)> = promisable.keys().collect();
            let mut counts = [0usize; 2];
            for round in 0..100 {
                // a retry of a key used before (perhaps by another task, perhaps still in flight)
                let retry = rng.gen_bool(0.2).then(|| {
                    let keys: Vec<String> = answers.lock().unwrap().keys().cloned().collect();
                    (!keys.is_empty()).then(|| keys[rng.gen_range(0..keys.len())].clone())
                });
                let retry = retry.flatten();
                let key = retry.clone().unwrap_or_else(|| format!("cart-{task}-{round}"));
                let lines: Vec<serde_json::Value> = (0..rng.gen_range(1..=3))
                    .map(|_| {
                        let (sku, country) = items[rng.gen_range(0..items.len())];
                        serde_json::json!({ "sku": sku, "region": country, "qty": rng.gen_range(1..=3), "split": rng.gen_bool(0.5) })
                    })
                    .collect();
                let (status, body) = post(&client, format!("{base}/v1/reservations"), serde_json::json!({ "lines": lines, "ttl_s": 10 }), Some(&key)).await;
                assert!(status == 201 || status == 409, "{status} {body}");
                counts[usize::from(status == 409)] += 1;
                let id = body["id"].as_str().unwrap().to_string();
                let lines_taken = body["lines"].clone();
                {
                    let mut answers = answers.lock().unwrap();
                    match answers.get(&key) {
                        Some((first_id, first_lines)) => {
                            assert_eq!(first_id, &id, "a retry of {key} named another reservation");
                            assert_eq!(first_lines, &lines_taken, "a retry of {key} got other units");
                        }
                        None => {
                            answers.insert(key.clone(), (id.clone(), lines_taken.clone()));
                        }
                    }
                }
                if status == 201 {
                    for line in lines_taken.as_array().unwrap() {
                        let taken: i64 = line["taken"].as_array().unwrap().iter().map(|take| take["units"].as_i64().unwrap()).sum();
                        assert_eq!(taken, line["qty"].as_i64().unwrap(), "{body}");
                    }
                }
                if status != 201 || retry.is_some() {
                    continue;
                }
                match rng.gen_range(0..20) {
                    0..=16 => {
                        let response = client.delete(format!("{base}/v1/reservations/{id}")).send().await.unwrap();
                        assert_eq!(response.status(), 200);
                    }
                    17 => {
                        let (status, confirmed_body) = post(&client, format!("{base}/v1/reservations/{id}/confirm"), serde_json::json!({}), None).await;
                        assert_eq!(status, 200, "{confirmed_body}");
                        assert_eq!(confirmed_body["status"], "confirmed");
                        let mut confirmed = confirmed.lock().unwrap();
                        for line in lines_taken.as_array().unwrap() {
                            for take in line["taken"].as_array().unwrap() {
                                *confirmed.entry((line["sku"].as_str().unwrap().to_string(), take["node"].as_str().unwrap().to_string())).or_default() += take["units"].as_i64().unwrap();
                            }
                        }
                    }
                    _ => {} // left to expire
                }
            }
            counts
        }));
    }
    let mut counts = [0usize; 2];
    for task in tasks {
        let [held, refused] = task.await.unwrap();
        counts[0] += held;
        counts[1] += refused;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let checks = checker.await.unwrap();
    assert!(counts[0] > 100 && counts[1] > 100 && checks > 10, "held {}, refused {}, checks {checks}", counts[0], counts[1]);
    // the confirmed units are reserve events of the speed view
    let confirmed = confirmed.lock().unwrap().clone();
    for ((sku, node), units) in &confirmed {
        assert_eq!(speed_reserved(&speed, sku, node).await - reserved_before[&(sku.clone(), node.clone())], *units, "{sku} at {node}");
    }
    // every TTL passes: nothing is held, without anything sweeping
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    for (sku, _) in promisable.keys() {
        assert_eq!(holds.held(sku).await.unwrap(), vec![], "{sku}");
    }
    // the records are kept a day: gone with the cluster, deleted from a server that stays
    if !url.contains(',') {
        forget_namespace(url, &namespace).await;
    }
}

/// What `during` gives, and the commands on keys under `namespace` that the Redis server at `url`
/// ran meanwhile, in the order it ran them (as MONITOR lists them: time, `[db client]`, command).
async fn monitored<T>(url: &str, namespace: &str, during: impl std::future::Future<Output = T>) -> (T, Vec<String>) {
    use futures::StreamExt;
    let client = redis::Client::open(url).unwrap();
    let mut monitor = client.get_async_monitor().await.unwrap();
    let value = during.await;
    // a read run after `during`: every command before it is listed ahead of it
    let marker = format!("\"{namespace}:monitored\"");
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET").arg(marker.trim_matches('"')).query_async::<Option<String>>(&mut connection).await.unwrap();
    let mut lines = monitor.on_message::<String>();
    let mut ran = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next()).await.expect("MONITOR lists the marker").expect("MONITOR goes on");
        if line.contains(&marker) {
            return (value, ran);
        }
        if line.contains(&format!("\"{namespace}")) {
            ran.push(line);
        }
    }
}

async fn speed_reserved(speed: &SpeedView, sku: &str, node: &str) -> i64 {
    let states = speed.sku_states(sku).await.unwrap();
    states.into_iter().find(|(name, _)| name == node).map_or(0, |(_, state)| state.reserved)
}

/// On one server, with the speed view beside the reservations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_carts_never_hold_more_than_was_promisable() {
    no_oversell(&std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()), true).await;
}

/// On a cluster (the count of confirmations is read before the SKU, in a round trip of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_carts_spanning_slots_never_oversell_on_a_cluster() {
    let cluster = sellable_bench::LocalCluster::start();
    no_oversell(&cluster.url(), false).await;
}

/// Every endpoint's contract: a 409 names the lines and what each could have had and takes
/// nothing; a hold shows in availability answers; extend, confirm, release and get; bad input is
/// a 400; a store that cannot be used, or a speed view that cannot be trusted, refuses with 503.
#[tokio::test]
async fn reservations_answer_as_documented() {
    let market = marketplace().await;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let (base, serving, _, holds, namespace) = shop(&market, &url, false).await;
    let scarce = scarce(&serving, &market, 1).await;
    let ((sku, country), nodes) = scarce.iter().next().unwrap();
    let total: i64 = nodes.values().sum();
    let client = reqwest::Client::new();
    let line = |qty: i64, split: bool| serde_json::json!({ "sku": sku, "region": country, "qty": qty, "split": split });
    let reserve = |body: serde_json::Value, key: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move { post(&client, format!("{base}/v1/reservations"), body, Some(key)).await }
    };

    // more than there is: 409, the line named with what it could have had, nothing taken
    let (status, body) = reserve(serde_json::json!({ "lines": [line(1, false), line(total + 1, true)] }), "too-many").await;
    assert_eq!((status, body["error"].as_str()), (409, Some("insufficient")), "{body}");
    assert_eq!(body["lines"], serde_json::json!([{ "line": 1, "sku": sku, "qty": total + 1, "available": total - 1 }]), "the first line took one unit: {body}");
    assert_eq!(holds.held(sku).await.unwrap(), vec![]);

    // all of it, split: the answers show it held
    let (status, body) = reserve(serde_json::json!({ "order_id": "o-1", "lines": [line(total, true)], "ttl_s": 60 }), "all-of-it").await;
    assert_eq!(status, 201, "{body}");
    let reservation: Reservation = serde_json::from_value(body.clone()).unwrap();
    assert_eq!((reservation.status, reservation.ttl_s, reservation.expires_at - reservation.created_at), (Status::Held, 60, 60_000));
    let answer = serving.availability(sku, country, 1, serving.now()).await.unwrap();
    assert_eq!((answer.available, answer.decision), (0, sellable_core::Verdict::Deny), "{answer:?}");
    assert!(answer.reasons.iter().any(|reason| reason.ends_with("held by live reservations")), "{answer:?}");
    // a second cart finds nothing; the retry of the first gets the first answer
    let (status, _) = reserve(serde_json::json!({ "lines": [line(1, false)] }), "late").await;
    assert_eq!(status, 409);
    let (status, again) = reserve(serde_json::json!({ "lines": [line(1, false)] }), "all-of-it").await;
    assert_eq!((status, &again), (201, &body));

    // extend, get, release (twice), and the units are back
    let id = reservation.id.clone();
    let (status, extended) = post(&client, format!("{base}/v1/reservations/{id}/extend"), serde_json::json!({ "ttl_s": 120 }), None).await;
    assert_eq!(status, 200, "{extended}");
    assert!(extended["expires_at"].as_i64().unwrap() >= reservation.expires_at + 59_000, "{extended}");
    let shown: serde_json::Value = client.get(format!("{base}/v1/reservations/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(shown, extended);
    for _ in 0..2 {
        let released: serde_json::Value = client.delete(format!("{base}/v1/reservations/{id}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(released["status"], "released", "{released}");
    }
    assert_eq!(holds.held(sku).await.unwrap(), vec![]);
    let (status, _) = post(&client, format!("{base}/v1/reservations/{id}/confirm"), serde_json::json!({}), None).await;
    assert_eq!(status, 409, "a released reservation is not confirmed");

    // bad input: 400 with the reason; unknown ids: 404
    for (body, key, says) in [
        (serde_json::json!({ "lines": [] }), Some("k1"), "1 to 100 lines"),
        (serde_json::json!({ "lines": [line(0, false)] }), Some("k2"), "qty must be"),
        (serde_json::json!({ "lines": [line(1, false)] }), None, "a client key"),
        (serde_json::json!({ "lines": [line(1, false)], "ttl_s": 5 }), Some("k3"), "ttl_s must be"),
        (serde_json::json!({ "lines": [{ "sku": sku, "qty": 1 }] }), Some("k4"), "give a region"),
        (serde_json::json!({ "lines": [line(1, false)], "colour": "red" }), Some("k5"), "unknown field"),
    ] {
        let (status, answer) = post(&client, format!("{base}/v1/reservations"), body, key).await;
        assert_eq!((status, answer["error"].as_str()), (400, Some("bad_request")), "{answer}");
        assert!(answer["message"].as_str().unwrap().contains(says), "{answer}");
    }
    let (status, answer) = reserve(serde_json::json!({ "lines": [{ "sku": "SKU-NOPE", "region": country, "qty": 1 }] }), "unknown-sku").await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("unknown_sku")), "{answer}");
    let response = client.get(format!("{base}/v1/reservations/r0000000000000000")).send().await.unwrap();
    assert_eq!(response.status(), 404);

    // a hold store that cannot be reached: 503, nothing taken
    let away = Arc::new(RedisHolds::connect("redis://127.0.0.1:1", "away").await.unwrap());
    let nodes = market.lake.load_nodes().await.unwrap();
    let speed = Arc::new(SpeedView::memory(FoldConfig::default()));
    let batch = publish(&market.lake, &speed).await;
    let rules = Arc::new(sellable_serving::RuleBook::empty(sellable_dsl::Schema::standard()));
    let cut_off = Arc::new(Serving::new(nodes, batch, speed.clone(), rules).with_holds(away).with_clock(sellable_serving::Clock::Fixed(market.cutoff + 3_600_000)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let away_base = format!("http://{}", listener.local_addr().unwrap());
    let router = cut_off.clone().router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let (status, answer) = post(&client, format!("{away_base}/v1/reservations"), serde_json::json!({ "lines": [line(1, false)] }), Some("away")).await;
    assert_eq!((status, answer["error"].as_str()), (503, Some("unavailable")), "{answer}");
    // that speed view was never caught up: even with a reachable store, nothing is decided on it
    let untrusted = Arc::new(
        Serving::new(market.lake.load_nodes().await.unwrap(), publish(&market.lake, &speed).await, speed, Arc::new(sellable_serving::RuleBook::empty(sellable_dsl::Schema::standard())))
            .with_holds(holds.clone())
            .with_clock(sellable_serving::Clock::Fixed(market.cutoff + 3_600_000)),
    );
    untrusted.refresh_watermarks().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let untrusted_base = format!("http://{}", listener.local_addr().unwrap());
    let router = untrusted.clone().router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let (status, answer) = post(&client, format!("{untrusted_base}/v1/reservations"), serde_json::json!({ "lines": [line(1, false)] }), Some("untrusted")).await;
    assert_eq!((status, answer["error"].as_str()), (503, Some("unavailable")), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("cannot be decided safely"), "{answer}");
    assert_eq!(holds.held(sku).await.unwrap(), vec![]);
    forget_namespace(&url, &namespace).await;
}

/// A marketplace whose events end now (answers by the wall clock find fresh feeds), batched an
/// hour before its end.
pub(crate) async fn live_marketplace() -> (tempfile::TempDir, Lake) {
    let dir = tempfile::tempdir().unwrap();
    let start = (chrono_now() - 2 * DAY) / 60_000 * 60_000;
    let config = SimConfig { seed: 11, skus: 40, nodes: 6, days: 2.0, start, ..SimConfig::default() };
    let (summary, lake) = generated_lake(&config, dir.path()).await;
    lake.compute_batch_view(summary.end - 3_600_000, FoldConfig::default()).await.unwrap();
    (dir, lake)
}

/// `sellable serve --redis` on `port`, once it answers at better than `conservative`.
pub(crate) async fn serve_process(lake: &Lake, url: &str, namespace: &str, port: u16) -> KillOnDrop {
    let args = ["serve", "--lake", lake.location(), "--redis", url, "--namespace", namespace, "--listen", &format!("127.0.0.1:{port}")];
    let child = KillOnDrop(crate::keyed(&mut std::process::Command::new(env!("CARGO_BIN_EXE_sellable"))).args(args).stderr(std::process::Stdio::null()).spawn().unwrap());
    for _ in 0..300 {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            let body: serde_json::Value = response.json().await.unwrap();
            if body["grade"] == "fresh" || body["grade"] == "bounded_stale" {
                return child;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("sellable serve never became ready");
}

/// The serving process killed (SIGKILL) while hundreds of carts are being reserved: after a
/// restart, a retry of every cart gets a clear 201 or 409, the first answer where one was given,
/// and once the TTLs have passed nothing is held (no half-reserved cart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_leaves_no_half_reserved_cart_and_retries_get_the_first_answer() {
    let (_dir, lake) = live_marketplace().await;
    let (url, _, namespace) = redis_names("checkout-kill");
    let (port, later_port) = (free_port(), free_port());
    let mut server = serve_process(&lake, &url, &namespace, port).await;
    let (skus, _) = lake.load_catalog().await.unwrap();
    let skus: Vec<String> = skus.into_iter().map(|info| info.sku).collect();
    let cart = |index: usize| {
        let lines: Vec<serde_json::Value> =
            (0..2).map(|line| serde_json::json!({ "sku": skus[(index * 7 + line * 5) % skus.len()], "region": "EU", "qty": 1, "split": true })).collect();
        serde_json::json!({ "order_id": format!("order-{index}"), "lines": lines, "ttl_s": 10 })
    };
    let client = crate::api();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent: Vec<_> = (0..300)
        .map(|index| {
            let (client, body, answered) = (client.clone(), cart(index), answered.clone());
            tokio::spawn(async move {
                let response = client.post(format!("http://127.0.0.1:{port}/v1/reservations")).json(&body).send().await.ok()?;
                let status = response.status().as_u16();
                let answer = response.json::<serde_json::Value>().await.ok()?;
                if status == 201 || status == 409 {
                    answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Some((status, answer))
            })
        })
        .collect();
    // killed once the first carts are decided (a 503 decides nothing), whatever the server's speed
    let started = std::time::Instant::now();
    while answered.load(std::sync::atomic::Ordering::SeqCst) < 5 {
        assert!(started.elapsed() < Duration::from_secs(120), "no cart was decided (201 or 409) in two minutes");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.0.kill().unwrap();
    let _ = server.0.wait();
    let mut first = HashMap::new();
    for (index, sent) in sent.into_iter().enumerate() {
        if let Some((status, body)) = sent.await.unwrap() {
            // a 503 is the server failing closed (the speed view did not answer within its
            // timeout on a busy machine): nothing taken, nothing recorded, a retry decides afresh
            if status == 503 {
                assert!(body["error"] == "unavailable" || body["error"] == "overloaded", "{body}");
                continue;
            }
            assert!(status == 201 || status == 409, "{status} {body}");
            first.insert(index, (status, body));
        }
    }
    assert!(!first.is_empty() && first.len() < 300, "the kill should come in the middle: {} of 300 answered", first.len());

    let _server = serve_process(&lake, &url, &namespace, later_port).await;
    let mut held = 0;
    for index in 0..300 {
        let (status, body) = post(&client, format!("http://127.0.0.1:{later_port}/v1/reservations"), cart(index), None).await;
        assert!(status == 201 || status == 409, "{status} {body}");
        held += usize::from(status == 201);
        if let Some((first_status, first_body)) = first.get(&index) {
            assert_eq!((status, &body["id"], &body["lines"]), (*first_status, &first_body["id"], &first_body["lines"]), "order-{index}");
        }
    }
    assert!(held > 10, "{held} carts held");
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let holds = RedisHolds::connect(&url, &namespace).await.unwrap();
    for sku in &skus {
        assert_eq!(holds.held(sku).await.unwrap(), vec![], "{sku}");
    }
    forget_namespace(&url, &namespace).await;
}
