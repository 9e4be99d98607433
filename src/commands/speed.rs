//! `sellable fold`, `reconcile`, `publish` and `deadletters`: the speed view in Redis.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use sellable_batch::Lake;
use sellable_core::event::{format_millis, read_event_file};
use sellable_core::{KnownIds, Millis, NodeState};
use sellable_speed::stream::{StreamConfig, Workers};
use sellable_speed::{CatchUpSource, SpeedView};

use crate::cli::{ArchiveArgs, DeadlettersArgs, FoldArgs, LakeArgs, PublishArgs, ReconcileArgs};

pub async fn fold(args: &FoldArgs) -> Result<()> {
    let Some(url) = &args.redis.redis else {
        bail!("fold needs --redis URL (or REDIS_URL): an embedded speed view lives only inside `sellable serve`")
    };
    let speed = SpeedView::redis(url, &args.redis.namespace, args.lake.fold_config()).await?;
    if let Some(stream) = &args.stream {
        return fold_stream(url, speed, stream, args).await;
    }
    let lake = args.lake.open()?;
    let cutoff = batch_cutoff(&lake).await?;
    let from = args.from.as_deref().map_or(CatchUpSource::Log, CatchUpSource::File);
    catch_up(&lake, &speed, cutoff, from, None).await?;
    Ok(())
}

/// The cutoff of the lake's batch view (from its lineage: the view itself is not read).
pub async fn batch_cutoff(lake: &Lake) -> Result<Millis> {
    lake.batch_view_asof().await?.context("the lake has no batch view: compute one first (sellable batch)")
}

/// Starts `speed` at the lake's batch cutoff (`sellable_speed::catch_up`) and says what it did;
/// returns the events not yet arrived at `until`.
pub async fn catch_up(
    lake: &Lake,
    speed: &SpeedView,
    cutoff: Millis,
    from: CatchUpSource<'_>,
    until: Option<Millis>,
) -> Result<Vec<sellable_core::Event>> {
    let started = std::time::Instant::now();
    let caught = sellable_speed::catch_up(lake, speed, cutoff, from, until).await.context("folding into the speed view")?;
    let (report, source) = (&caught.report, &caught.source);
    for error in report.rejected.iter().take(20) {
        eprintln!("fold: rejected {source}: {error}");
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = report.stats;
    eprintln!(
        "fold: {} events from {source} after {} into the {} speed view: {} applied, {} duplicates, {} too late, \
         {} expired, {} conflicting, {} before the cutoff, {} malformed in {seconds:.1} s ({:.0} events/s)",
        caught.read,
        format_millis(cutoff),
        speed.describe(),
        stats.applied,
        stats.duplicates,
        stats.too_late,
        stats.expired,
        stats.conflicts,
        report.before_cutoff,
        report.rejected.len(),
        caught.read as f64 / seconds.max(1e-9)
    );
    Ok(caught.held_back)
}

/// Runs `--workers` consumers of the stream's group until Ctrl-C or `--until-idle`.
async fn fold_stream(url: &str, speed: SpeedView, stream: &str, args: &FoldArgs) -> Result<()> {
    if let Some(hazard) = sellable_speed::persistence_hazard(url).await {
        tracing::warn!("{hazard}");
    }
    let mut config = StreamConfig::new(stream, &args.group, &args.consumer);
    config.batch = args.batch as usize;
    config.known = catalog_names(&args.lake).await;
    let mut workers = Workers::new(config, args.workers);
    workers.idle_limit = args.until_idle.map(std::time::Duration::from_secs_f64);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = sellable_speed::stream::run_workers(url, Arc::new(speed), workers, shutdown).await?;
    let (total, seconds) = (report.stats, report.busy.as_secs_f64());
    eprintln!(
        "fold: {} entries from {stream}: {} applied, {} duplicates, {} dead-lettered in {seconds:.1} s of work ({:.0} entries/s)",
        total.entries,
        total.fold.applied,
        total.fold.duplicates,
        total.dead_lettered,
        total.entries as f64 / seconds.max(1e-9)
    );
    Ok(())
}

/// Archives the stream into the lake until Ctrl-C or `--until-idle`.
pub async fn archive(args: &ArchiveArgs) -> Result<()> {
    let lake = args.lake.open()?;
    let mut config = StreamConfig::new(&args.stream, sellable_speed::archive::ARCHIVE_GROUP, &args.consumer);
    config.batch = args.batch as usize;
    config.known = catalog_names(&args.lake).await;
    let max_delay = std::time::Duration::from_millis(args.max_delay_ms);
    let idle_limit = args.until_idle.map(std::time::Duration::from_secs_f64);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let started = std::time::Instant::now();
    let stats = sellable_speed::archive::run_archiver(&args.redis, &lake, config, max_delay, idle_limit, None, shutdown).await?;
    eprintln!(
        "archive: {} entries from {} in {:.1} s: {} events archived in {} batches, {} archived before a restart, {} malformed or refused",
        stats.entries,
        args.stream,
        started.elapsed().as_secs_f64(),
        stats.archived,
        stats.batches,
        stats.already_archived,
        stats.refused
    );
    Ok(())
}

/// The names of the lake's catalog, which the stream's door checks events against; `None` (with a
/// warning) when there is no lake or no catalog in it.
async fn catalog_names(lake: &LakeArgs) -> Option<Arc<KnownIds>> {
    if !Lake::is_remote(&lake.lake.to_string_lossy()) && !lake.lake.exists() {
        tracing::warn!(lake = %lake.lake.display(), "no lake: events are not checked against a catalog");
        return None;
    }
    match known_names(&lake.open().ok()?).await {
        Ok(names) => Some(names),
        Err(error) => {
            tracing::warn!(%error, "no catalog: events are not checked against one");
            None
        }
    }
}

/// The names of the lake's catalog, as the door checks events against them.
pub async fn known_names(lake: &Lake) -> Result<Arc<KnownIds>> {
    let (skus, nodes) = lake.load_catalog().await.context("loading the catalog")?;
    Ok(Arc::new(KnownIds::of(&skus, &nodes)))
}

/// Compares the live speed view with the truth of the lake: the fold of the events that arrived
/// after the cutoff, knowing the batch view's recent ids (exactly what `fold` does).
pub async fn reconcile(args: &ReconcileArgs) -> Result<()> {
    let lake = args.lake.open()?;
    let config = args.lake.fold_config();
    let live = SpeedView::redis(&args.server.redis, &args.server.namespace, config).await?;
    let cutoff = batch_cutoff(&lake).await?;
    let truth = SpeedView::memory(config);
    catch_up(&lake, &truth, cutoff, CatchUpSource::Log, None).await?;
    let (skus, _) = lake.load_catalog().await?;
    let mut drifted = 0;
    for sku in skus.iter().map(|s| s.sku.as_str()) {
        let live_states = live.sku_states(sku).await?;
        let true_states = truth.sku_states(sku).await?;
        let mut nodes: Vec<&str> = live_states.iter().chain(&true_states).map(|(node, _)| node.as_str()).collect();
        nodes.sort();
        nodes.dedup();
        for node in nodes {
            let find = |states: &[(String, NodeState)]| states.iter().find(|(n, _)| n == node).map(|(_, s)| s.clone());
            let (live_state, true_state) = (find(&live_states), find(&true_states));
            if live_state == true_state {
                continue;
            }
            drifted += 1;
            println!("{sku} at {node}: redis has {}; the lake says {}", show(&live_state), show(&true_state));
            if args.repair {
                live.replace(sku, node, true_state.as_ref()).await?;
            }
        }
    }
    match (drifted, args.repair) {
        (0, _) => println!("reconcile: the speed view matches the lake"),
        (n, true) => println!("reconcile: {n} sku×node(s) repaired"),
        (n, false) => bail!("{n} sku×node(s) drifted; rerun with --repair to rewrite them"),
    }
    Ok(())
}

fn show(state: &Option<NodeState>) -> String {
    match state {
        Some(s) => format!("on_hand {} reserved {} held {} atp {}", s.on_hand(), s.reserved, s.held, s.atp()),
        None => "nothing".to_string(),
    }
}

pub async fn publish(args: &PublishArgs) -> Result<()> {
    let events = read_event_file(&args.from).with_context(|| format!("reading {}", args.from.display()))?;
    let mut malformed = 0u64;
    let lines = events.filter_map(|event| match event {
        Ok(event) => Some(sellable_core::event::encode_json(&event)),
        Err(error) => {
            malformed += 1;
            eprintln!("publish: skipped {}: {error}", args.from.display());
            None
        }
    });
    let lines: Vec<String> = lines.collect();
    let published = sellable_speed::stream::publish(&args.redis, &args.stream, lines).await?;
    eprintln!("publish: {published} events appended to {}, {malformed} malformed skipped", args.stream);
    Ok(())
}

pub async fn dead_letters(args: &DeadlettersArgs) -> Result<()> {
    let dead = format!("{}:dead", args.stream.as_deref().unwrap_or(&args.namespace));
    let letters = sellable_speed::stream::dead_letters(&args.redis, &dead, args.count).await?;
    if letters.is_empty() {
        println!("no dead letters in {dead}");
    }
    for letter in letters {
        println!("{}  entry {}: {}\n    {}", letter.id, letter.entry, letter.error, letter.raw);
    }
    Ok(())
}
