//! `sellable batch` and `sellable trainset`: the nightly job, feature backfills and training sets.

use anyhow::{Context, Result};
use sellable_batch::{Lake, Progress};
use sellable_core::event::format_millis;
use sellable_core::{FoldConfig, Millis};

use crate::cli::{BatchArgs, TrainsetArgs, DAY_MS};

pub async fn run(args: &BatchArgs) -> Result<()> {
    let engine = args.engine()?;
    let cluster = match &engine {
        sellable_batch::Engine::Ballista { scheduler: Some(url) } => Some(format!("the Ballista cluster of {url}")),
        sellable_batch::Engine::Ballista { scheduler: None } => Some("a standalone Ballista cluster".to_string()),
        sellable_batch::Engine::Local => None,
    };
    let lake = args.lake.open()?.with_engine(engine);
    match cluster {
        Some(cluster) => job(args, &lake).await.with_context(|| format!("the nightly job on {cluster}")),
        None => job(args, &lake).await,
    }
}

async fn job(args: &BatchArgs, lake: &Lake) -> Result<()> {
    if let Some((from, to)) = args.every_day {
        let cutoffs: Vec<Millis> = (from..=to).step_by(DAY_MS as usize).collect();
        return features(lake, &cutoffs, args.lake.fold_config()).await;
    }
    let asof = match args.asof {
        Some(asof) => asof,
        None => lake.last_arrival().await?.context("the lake has no events: nothing to compute")?,
    };
    if args.incremental || args.full {
        return incremental(lake, asof, args.lake.fold_config(), args.full).await;
    }
    nightly(lake, asof, args.lake.fold_config()).await
}

/// The nightly job folded from the last night's state when it applies, else recomputed (always
/// with `full`); either way it keeps the state for the next night.
async fn incremental(lake: &Lake, asof: Millis, config: FoldConfig, full: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let (view, features, night) = lake
        .nightly_incremental(asof, config, full, &Progress::stderr())
        .await
        .with_context(|| format!("computing the batch view and features as of {}", format_millis(asof)))?;
    let how = match night {
        sellable_batch::Night::Incremental { from } => format!(", folded the events that arrived since {}", format_millis(from)),
        sellable_batch::Night::Full { why } => format!(", recomputed from every event: {why}"),
    };
    report(&view, &features, started, &how);
    Ok(())
}

/// The nightly job: batch view and features as of `asof`.
pub async fn nightly(lake: &Lake, asof: Millis, config: FoldConfig) -> Result<()> {
    let started = std::time::Instant::now();
    let (view, features) = lake
        .nightly(asof, config, &Progress::stderr())
        .await
        .with_context(|| format!("computing the batch view and features as of {}", format_millis(asof)))?;
    let shares = format!(" ({} {} of the nodes)", view.shares, if view.shares == 1 { "share" } else { "shares" });
    report(&view, &features, started, &shares);
    Ok(())
}

/// What a nightly job wrote, in one line; `how` follows its time.
fn report(view: &sellable_batch::BatchSummary, features: &sellable_batch::features::FeaturesSummary, started: std::time::Instant, how: &str) {
    eprintln!(
        "batch: view as of {} of {} sku×nodes ({} on-hand deltas after their last count), {} feature rows, in {:.1} s{how} \
         -> batch_view version {}, features version {}",
        format_millis(view.asof),
        view.sku_nodes,
        view.deltas,
        features.rows,
        started.elapsed().as_secs_f64(),
        view.version,
        features.version
    );
}

pub async fn features(lake: &Lake, cutoffs: &[Millis], config: FoldConfig) -> Result<()> {
    let started = std::time::Instant::now();
    let summary = lake.compute_features(cutoffs, config, &Progress::stderr()).await.context("computing the features")?;
    eprintln!(
        "batch: features of {} cutoff(s) ({} .. {}), {} rows, in {:.1} s -> features version {}",
        summary.cutoffs.len(),
        summary.cutoffs.first().map(|c| format_millis(*c)).unwrap_or_default(),
        summary.cutoffs.last().map(|c| format_millis(*c)).unwrap_or_default(),
        summary.rows,
        started.elapsed().as_secs_f64(),
        summary.version
    );
    Ok(())
}

pub async fn trainset(args: &TrainsetArgs) -> Result<()> {
    let lake = args.lake.open()?;
    let started = std::time::Instant::now();
    let (rows, lineage, summary) =
        lake.build_trainset(args.from, args.to, args.lake.fold_config(), &Progress::stderr()).await.context("building the training set")?;
    let version = lake.write_trainset(&rows, &lineage).await.context("writing the training set")?;
    eprintln!(
        "trainset: {} orders ({} shorted) from {} to {}; left out: {} before the first feature cutoff, {} released, {} without \
         an outcome yet; {} events replayed after the {}batch view as of {} in {:.1} s -> trainset version {version}\n  lineage: events v{}, \
         features v{}, {}",
        summary.rows,
        summary.positives,
        format_millis(args.from),
        format_millis(args.to),
        summary.before_first_cutoff,
        summary.released,
        summary.no_outcome_yet,
        summary.events_replayed,
        if summary.stored_view { "stored " } else { "" },
        summary.replay_from.map(format_millis).unwrap_or_else(|| "none (no cutoff)".into()),
        started.elapsed().as_secs_f64(),
        lineage.lake_version,
        lineage.features_version,
        lineage.code_version
    );
    Ok(())
}
