//! The Flight SQL server's throughput beside DataFusion in-process, in one run on one lake: each
//! query's rows/s and MB/s through Flight (a client in this process, the server on loopback) and
//! through the same DataFusion context in-process, with the ratio (the protocol's cost). Each query runs
//! RUNS times each way, the two ways taking turns (so neither gets a warmer cache), and the
//! median run of each way is printed, with the lowest and highest ratio of a pair of runs. Run by
//! `benchmarks/scripts/flight.sh`.
//! Usage: flight-bench LAKE_DIR [ROWS] [RUNS]   (ROWS: the size of the large SELECT, default
//! 10,000,000; RUNS: default 3)

use std::sync::Arc;
use std::time::Instant;

use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::execution::memory_pool::FairSpillPool;
use futures::StreamExt;
use sellable_analytics::{Analytics, AnalyticsConfig};
use sellable_batch::Lake;
use sellable_serving::door::{KeyEntry, KeyRing, Scope};

/// The allocator `sellable serve --flight` runs with (src/main.rs), so that both sides of the
/// comparison allocate as the server does.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Rows and bytes (Arrow memory) of a stream of batches, and the seconds it took.
struct Run {
    rows: u64,
    bytes: u64,
    seconds: f64,
}

/// Reads a stream of batches to its end, counting, from `started`.
async fn drain<E: std::fmt::Debug>(mut stream: impl futures::Stream<Item = Result<arrow_array::RecordBatch, E>> + Unpin, started: Instant) -> Run {
    let (mut rows, mut bytes) = (0, 0);
    while let Some(batch) = stream.next().await {
        let batch = batch.expect("a batch");
        rows += batch.num_rows() as u64;
        bytes += batch.get_array_memory_size() as u64;
    }
    Run { rows, bytes, seconds: started.elapsed().as_secs_f64() }
}

/// The run of median time.
fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    runs.swap_remove(runs.len() / 2)
}

async fn over_flight(client: &mut FlightSqlServiceClient<tonic::transport::Channel>, sql: &str) -> Run {
    let started = Instant::now();
    let info = client.execute(sql.to_string(), None).await.expect("the query plans");
    let ticket = info.endpoint[0].ticket.clone().expect("a ticket");
    drain(client.do_get(ticket).await.expect("the answer starts"), started).await
}

async fn in_process(lake: &Lake, sql: &str) -> Run {
    let started = Instant::now();
    let (context, _) = lake.analytics_session(Arc::new(FairSpillPool::new(512 << 20))).await.expect("the lake opens");
    drain(context.sql(sql).await.expect("the query plans").execute_stream().await.expect("the query runs"), started).await
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = args.get(1) else {
        eprintln!("usage: flight-bench LAKE_DIR [ROWS]");
        std::process::exit(2);
    };
    let target: u64 = args.get(2).map(|rows| rows.parse().expect("ROWS is a number")).unwrap_or(10_000_000);
    let runs: usize = args.get(3).map(|runs| runs.parse().expect("RUNS is a number")).unwrap_or(3).max(1);
    let lake = Arc::new(Lake::open(std::path::Path::new(dir)).expect("the lake opens"));
    let events = lake.info().await.expect("the lake's datasets").iter().find(|info| info.name == "events").map_or(0, |info| info.rows);
    assert!(events > 0, "the lake has no events");
    let repeat = target.div_ceil(events);

    let (key, entry) = KeyEntry::generate("bench", vec![Scope::Read]);
    let analytics = Analytics::new(lake.clone(), KeyRing::new(&[entry]), &AnalyticsConfig { query_timeout_s: 3_600, memory_mb: 1_024, ..AnalyticsConfig::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = listener.local_addr().expect("an address");
    tokio::spawn(sellable_analytics::serve(analytics, listener, std::future::pending()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}")).expect("an endpoint").connect().await.expect("the server answers");
    let mut client = FlightSqlServiceClient::new(channel);
    client.set_token(key);

    let queries = [
        (format!("SELECT {} rows (events × {repeat})", events * repeat), format!("SELECT e.* FROM events e CROSS JOIN range({repeat}) r")),
        ("group-by on events (sku, node, kind)".to_string(), "SELECT sku, node, kind, COUNT(*) AS n, SUM(qty) AS qty FROM events GROUP BY sku, node, kind".to_string()),
    ];
    println!("{events} events in the lake; each query {runs} times through Flight SQL and in-process in turn, on the same lake; the median run of each");
    println!("{:<44} {:>12} {:>10} {:>12} {:>10} {:>10} {:>7} {:>13}", "query", "rows", "Flight s", "rows/s", "MB/s", "local s", "ratio", "ratio range");
    for (name, sql) in queries {
        let (mut flights, mut locals) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            flights.push(over_flight(&mut client, &sql).await);
            locals.push(in_process(&lake, &sql).await);
        }
        for (flight, local) in flights.iter().zip(&locals) {
            assert_eq!(flight.rows, local.rows, "{name}: the same rows both ways");
        }
        let ratios: Vec<f64> = flights.iter().zip(&locals).map(|(flight, local)| local.seconds / flight.seconds).collect();
        let (low, high) = ratios.iter().fold((f64::MAX, f64::MIN), |(low, high), ratio| (low.min(*ratio), high.max(*ratio)));
        let (flight, local) = (median(flights), median(locals));
        println!(
            "{:<44} {:>12} {:>10.2} {:>12.0} {:>10.1} {:>10.2} {:>6.2}x {:>5.2}-{:<5.2}x",
            name,
            flight.rows,
            flight.seconds,
            flight.rows as f64 / flight.seconds,
            flight.bytes as f64 / 1e6 / flight.seconds,
            local.seconds,
            local.seconds / flight.seconds,
            low,
            high
        );
    }
    println!("ratio: in-process time / Flight time, of the medians (1.00x: the protocol costs nothing); range: of each pair of runs");
}
