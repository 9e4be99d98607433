//! End-to-end freshness: the time from `XADD` of an event to the first availability answer that
//! reflects it, under a steady background load. Driven by `benchmarks/scripts/freshness.sh`, which
//! starts `sellable serve --redis` and `sellable fold --stream` first.
//!
//! Usage: freshness GEN_DIR REDIS_URL STREAM BASE_URL RATE SECONDS
//!
//! Background: real events of GEN_DIR, restamped (new ids, happening and arriving now), at RATE
//! events/s in 10 ms ticks. Probes: every 100 ms one `receipt` of 1 unit of a SKU the background
//! never touches, at a warehouse; the prober polls availability until the units show.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sellable_core::catalog::{nodes_from_batch, read_parquet};
use sellable_core::event::{encode_json, read_event_file};
use sellable_core::{Event, EventKind, NodeKind};

fn millis_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

async fn available(client: &reqwest::Client, url: &str) -> i64 {
    let answer: serde_json::Value = client.get(url).send().await.expect("serve answers").json().await.expect("JSON answer");
    answer["available"].as_i64().expect("available is a number")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, gen, redis_url, stream, base, rate, seconds] = args.as_slice() else {
        eprintln!("usage: freshness GEN_DIR REDIS_URL STREAM BASE_URL RATE SECONDS");
        std::process::exit(2);
    };
    let (rate, seconds): (u64, u64) = (rate.parse().expect("RATE"), seconds.parse().expect("SECONDS"));
    let gen = std::path::Path::new(gen);
    let nodes = read_parquet(&gen.join("nodes.parquet"), nodes_from_batch).expect("nodes.parquet");
    let probe_node = nodes.iter().find(|n| n.kind == NodeKind::Warehouse).expect("a warehouse").clone();
    let probe_sku = "SKU-000000";
    let pool: Vec<Event> = read_event_file(&gen.join("events.parquet"))
        .expect("events.parquet")
        .filter_map(Result::ok)
        .filter(|e| e.sku != probe_sku)
        .take(200_000)
        .collect();
    let url = format!("{base}/v1/availability/{probe_sku}?region={}&qty=1", probe_node.country);
    // the server's API key, when the script gives one
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(key) = std::env::var("SELLABLE_API_KEY") {
        headers.insert("authorization", format!("Bearer {key}").parse().expect("a key is ASCII"));
    }
    let client = reqwest::Client::builder().default_headers(headers).build().expect("an HTTP client");
    let start_available = available(&client, &url).await;

    let redis = redis::Client::open(redis_url.as_str()).expect("redis url");
    let mut connection = redis.get_multiplexed_async_connection().await.expect("redis");
    let (sender, mut probes) = tokio::sync::mpsc::unbounded_channel::<(i64, Instant)>();
    let prober = tokio::spawn(async move {
        let mut pending: VecDeque<(i64, Instant)> = VecDeque::new();
        let mut latencies = Vec::new();
        let mut open = true;
        while open || !pending.is_empty() {
            while let Ok(probe) = probes.try_recv() {
                pending.push_back(probe);
            }
            if open && probes.is_closed() && probes.is_empty() {
                open = false;
            }
            if pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let reflected = available(&client, &url).await - start_available;
            while pending.front().is_some_and(|(k, _)| *k <= reflected) {
                let (_, sent) = pending.pop_front().expect("front");
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            if pending.front().is_some_and(|(_, sent)| sent.elapsed() > Duration::from_secs(30)) {
                panic!("a probe was not reflected within 30 s");
            }
        }
        latencies
    });

    let per_tick = (rate / 100).max(1) as usize;
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    let (mut sent, mut probe_count, mut tick) = (0usize, 0i64, 0u64);
    while started.elapsed() < Duration::from_secs(seconds) {
        ticks.tick().await;
        let now = millis_now();
        let mut pipe = redis::pipe();
        for _ in 0..per_tick {
            let template = &pool[sent % pool.len()];
            let event = Event { event_id: format!("fresh-{now}-{sent}"), ts: now, arrived: Some(now), ..template.clone() };
            pipe.cmd("XADD").arg(stream).arg("*").arg("event").arg(encode_json(&event)).ignore();
            sent += 1;
        }
        let probe = tick % 10 == 0;
        if probe {
            probe_count += 1;
            let event = Event {
                event_id: format!("probe-{now}-{probe_count}"),
                ts: now,
                sku: probe_sku.to_string(),
                node: probe_node.node.clone(),
                kind: EventKind::Receipt,
                qty: 1,
                order_id: None,
                arrived: Some(now),
            };
            pipe.cmd("XADD").arg(stream).arg("*").arg("event").arg(encode_json(&event)).ignore();
        }
        let sent_at = Instant::now();
        let () = pipe.query_async(&mut connection).await.expect("XADD");
        if probe {
            sender.send((probe_count, sent_at)).expect("prober alive");
        }
        tick += 1;
    }
    drop(sender);
    let offered = sent as f64 / started.elapsed().as_secs_f64();
    let mut latencies = prober.await.expect("prober");
    latencies.sort_by(f64::total_cmp);
    let quantile = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!("background load       {offered:>10.0} events/s offered ({rate} asked)");
    println!("probes                {:>10}", latencies.len());
    println!("freshness p50         {:>10.1} ms", quantile(0.5));
    println!("freshness p99         {:>10.1} ms   (target < 250 ms)", quantile(0.99));
    println!("freshness max         {:>10.1} ms", quantile(1.0));
}
