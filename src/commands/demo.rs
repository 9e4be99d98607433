//! `sellable demo`: the whole system on embedded defaults, in one process.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use sellable_batch::{Lake, Progress};
use sellable_core::{Event, FoldConfig, Millis};
use sellable_models::TrainConfig;
use sellable_serving::Serving;
use sellable_speed::{CatchUpSource, SpeedView};

use crate::cli::{DemoArgs, DAY_MS};
use crate::commands::{batch, lake, models, run, serve, speed};

/// Generates a marketplace whose events end about now, computes the batch view a day before the
/// end, trains a model on the days before, and serves: embedded (the last day folded at start)
/// or, with `--redis`, as the living system that replays the last day.
pub async fn run(args: DemoArgs) -> Result<()> {
    let now = chrono::Utc::now().timestamp_millis();
    let days_ms = (args.sim.days * DAY_MS as f64) as Millis;
    let start = (now - days_ms) / 60_000 * 60_000;
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir).with_context(|| format!("clearing {}", args.dir.display()))?;
    }
    let generated = args.dir.join("generated");
    let summary = lake::gen(&lake::sim_config(&args.sim, start), &generated)?;
    let lake = Lake::open(&args.dir.join("lake"))?;
    // The batch view stops a day before the end; the speed view holds the last day.
    let fold_config = FoldConfig::default();
    let cutoff = summary.end - DAY_MS.min(days_ms / 2);
    let later = lake::import_until(&lake, &generated, args.redis.is_some().then_some(cutoff)).await?;
    batch::nightly(&lake, cutoff, fold_config).await?;
    let models = serve::model_book(&demo_model(&lake, &args.dir.join("models"), start, cutoff, fold_config).await, None)?;
    if let Some(url) = &args.redis {
        return live(&args, url, lake, models, cutoff, later).await;
    }
    let speed = SpeedView::memory(fold_config);
    let in_flight = speed::catch_up(&lake, &speed, cutoff, CatchUpSource::Log, Some(now)).await?;
    let speed = Arc::new(speed);
    if !in_flight.is_empty() {
        eprintln!("demo: {} events are still in flight; each is folded when its arrival time comes", in_flight.len());
        spawn_live_feed(speed.clone(), in_flight);
    }
    let lake = Arc::new(lake);
    let writes = serve::Writes { decisions: serve::decision_log(&lake, &Default::default())?, ..Default::default() };
    let serving = serve::load_serving(&lake, speed, args.rules.book()?, models, writes).await?;
    let example = example_request(&lake, &serving).await;
    serve::serve(serving, serve::Front { listen: args.listen, example, door: Default::default(), analytics: None }).await
}

/// The living demo: `sellable run`'s loop on Redis, its clock running `--replay-speed` times
/// faster from the cutoff, the last day's events published to the ingestion stream as that clock
/// reaches their arrival, and a cutover every `--nightly-every` simulated hours.
async fn live(args: &DemoArgs, url: &str, lake: Lake, models: Arc<sellable_serving::ModelBook>, cutoff: Millis, later: Vec<Event>) -> Result<()> {
    let lake = Arc::new(lake);
    let config = sellable_lifecycle::LifecycleConfig {
        url: url.to_string(),
        stream: "sellable-demo-events".to_string(),
        namespace: "sellable-demo".to_string(),
        fold: FoldConfig::default(),
        workers: 1,
        known: Some(speed::known_names(&lake).await?),
        partitions: 0,
        catch_up_timeout: std::time::Duration::from_secs(600),
        retire_after: std::time::Duration::ZERO,
        incremental: false,
    };
    forget_previous_demo(&config).await?;
    let epoch = sellable_lifecycle::start(&lake, &config).await?;
    let clock = sellable_serving::Clock::Scaled { wall: chrono::Utc::now().timestamp_millis(), start: cutoff, speed: args.replay_speed };
    let serving = serve::load_serving_with_clock(&lake, epoch.speed.clone(), args.rules.book()?, models, run::writes(&config, &lake, &Default::default()).await?, clock).await?;
    eprintln!(
        "demo: replaying the last day's {} events at {}x (one simulated hour every {:.0} s), a cutover every {} simulated hours",
        later.len(),
        args.replay_speed,
        3_600.0 / args.replay_speed,
        args.nightly_every
    );
    spawn_replay(url.to_string(), config.stream.clone(), later, clock);
    let every = std::time::Duration::from_secs_f64(args.nightly_every * 3_600.0 / args.replay_speed);
    let example = example_request(&lake, &serving).await;
    run::serve_loop(lake, serving, config, epoch, every, serve::Front { listen: args.listen, example, door: Default::default(), analytics: None }).await
}

/// Drops what an earlier living demo left in Redis: its stream (and the groups on it) and every
/// epoch's namespace.
async fn forget_previous_demo(config: &sellable_lifecycle::LifecycleConfig) -> Result<()> {
    SpeedView::redis(&config.url, &config.namespace, config.fold).await?.clear().await.context("clearing the demo's namespaces")?;
    sellable_speed::stream::delete_stream(&config.url, &config.stream).await?;
    Ok(())
}

/// Publishes each event to the ingestion stream when the demo's clock reaches its arrival.
fn spawn_replay(url: String, stream: String, events: Vec<Event>, clock: sellable_serving::Clock) {
    tokio::spawn(async move {
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let now = clock.now();
            let due: Vec<String> = std::iter::from_fn(|| events.next_if(|event| event.arrival() <= now)).map(|event| sellable_core::event::encode_json(&event)).collect();
            if !due.is_empty() {
                if let Err(error) = sellable_speed::stream::publish(&url, &stream, due).await {
                    tracing::warn!(%error, "the replay could not publish; retrying");
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        eprintln!("demo: the replay is over; the marketplace is quiet now");
    });
}

/// Folds events as their arrival time comes, like a live stream: the demo's last events are
/// still in flight when it starts (seller feeds lag, some scans are stuck for days).
fn spawn_live_feed(speed: Arc<SpeedView>, events: Vec<Event>) {
    tokio::spawn(async move {
        for event in events {
            let wait = event.arrival() - chrono::Utc::now().timestamp_millis();
            if wait > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(wait as u64)).await;
            }
            match speed.fold(std::slice::from_ref(&event), "demo-live").await {
                Ok(_) => tracing::debug!(sku = %event.sku, node = %event.node, kind = %event.kind, "folded live"),
                Err(error) => tracing::warn!(sku = %event.sku, node = %event.node, %error, "live fold failed"),
            }
        }
    });
}

/// The demo's model: features as of every midnight before the cutoff, a training set of the
/// orders from the first midnight to the cutoff, the training job, promoted. Returns the registry
/// directory; if training fails (too few days, say), serving runs degraded and says why.
async fn demo_model(lake: &Lake, dir: &Path, start: Millis, cutoff: Millis, config: FoldConfig) -> PathBuf {
    let first = start - start.rem_euclid(DAY_MS) + DAY_MS;
    let midnights: Vec<Millis> = (first..cutoff).step_by(DAY_MS as usize).collect();
    let trained = async {
        lake.compute_features(&midnights, config, &Progress::stderr()).await.context("computing the daily features")?;
        let (rows, lineage, summary) = lake.build_trainset(first, cutoff, config, &Progress::stderr()).await.context("building the training set")?;
        lake.write_trainset(&rows, &lineage).await.context("writing the training set")?;
        eprintln!("demo: training set of {} orders ({} shorted)", summary.rows, summary.positives);
        // the demo's marketplace is a week: one validation day and one held-out day
        let config = TrainConfig { validation_days: 1, test_days: 1, ..TrainConfig::default() };
        models::train_job(lake, dir, &config, true).await
    };
    if let Err(error) = trained.await {
        eprintln!("demo: no model ({error:#}); answers hold back the static safety stock of the last evaluation, if any, and apply the rules");
    }
    dir.to_path_buf()
}

/// A request worth pasting: the most popular SKU that can be promised now in a country of the
/// catalog; failing that (rules may deny everything), the most popular SKU anywhere.
async fn example_request(lake: &Lake, serving: &Serving) -> Option<String> {
    let now = serving.now();
    let (skus, _) = lake.load_catalog().await.ok()?;
    let mut skus: Vec<String> = skus.into_iter().map(|info| info.sku).collect();
    skus.sort();
    let countries: std::collections::BTreeSet<&str> = serving.nodes.values().map(|node| node.country.as_str()).collect();
    let mut first = None;
    for sku in skus.iter().take(100) {
        for country in countries.iter().copied() {
            let request = format!("/v1/availability/{sku}?region={country}&qty=1");
            if serving.availability(sku, country, 1, now).await.is_ok_and(|answer| answer.units > 0) {
                return Some(request);
            }
            first.get_or_insert(request);
        }
    }
    first
}
