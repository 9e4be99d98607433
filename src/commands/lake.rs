//! `sellable gen` and `sellable lake`: the simulated marketplace and the lake of Lance datasets.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use sellable_batch::Lake;
use sellable_bench::{generate, SimConfig, SimSummary};
use sellable_core::catalog::{nodes_from_batch, read_parquet, skus_from_batch};
use sellable_core::event::{format_millis, read_event_file};
use sellable_core::Millis;

use crate::cli::{GenArgs, SimArgs};

pub fn gen_command(args: &GenArgs) -> Result<()> {
    gen(&sim_config(&args.sim, args.start.unwrap_or(sellable_bench::simulator::DEFAULT_START)), &args.out)?;
    Ok(())
}

pub fn sim_config(args: &SimArgs, start: Millis) -> SimConfig {
    SimConfig {
        seed: args.seed,
        skus: args.skus,
        nodes: args.nodes,
        days: args.days,
        start,
        orders_per_sku_day: args.orders_per_sku_day,
        burst_factor: args.burst_factor,
        dynamics: match args.dynamics.as_str() {
            "quiet-with-phantom-stock" => sellable_bench::Dynamics::quiet_with_phantom_stock(),
            _ => sellable_bench::Dynamics::default(),
        },
        show_progress: true,
    }
}

pub fn gen(config: &SimConfig, out: &Path) -> Result<SimSummary> {
    let started = std::time::Instant::now();
    let summary = generate(config, out).with_context(|| format!("generating a marketplace into {}", out.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "gen: {} events ({} orders, {} shorts, {} stuck past any lateness) in {seconds:.1} s ({:.0} events/s) -> {}",
        summary.events,
        summary.orders,
        summary.shorts,
        summary.late_events,
        summary.events as f64 / seconds.max(1e-9),
        out.display()
    );
    Ok(summary)
}

/// Imports a `gen` directory (catalog and events) or one events file.
pub async fn import(lake: &Lake, from: &Path) -> Result<()> {
    import_until(lake, from, None).await.map(|_| ())
}

/// [`import`], keeping out the events that arrive after `until` (if given): they are returned, in
/// the file's order (arrival order for a `gen` directory).
pub async fn import_until(lake: &Lake, from: &Path, until: Option<Millis>) -> Result<Vec<sellable_core::Event>> {
    let events_file = if from.is_dir() {
        let paths = sellable_bench::SimPaths::in_dir(from);
        let skus = read_parquet(&paths.skus, skus_from_batch).with_context(|| format!("reading {}", paths.skus.display()))?;
        let nodes = read_parquet(&paths.nodes, nodes_from_batch).with_context(|| format!("reading {}", paths.nodes.display()))?;
        lake.import_catalog(&skus, &nodes).await.context("importing the catalog")?;
        eprintln!("import: catalog of {} skus and {} nodes", skus.len(), nodes.len());
        paths.events
    } else {
        from.to_path_buf()
    };
    let events = read_event_file(&events_file).with_context(|| format!("reading {}", events_file.display()))?;
    let later = Arc::new(std::sync::Mutex::new(Vec::new()));
    let held = later.clone();
    let events = events.filter(move |event| match (event, until) {
        (Ok(event), Some(until)) if !sellable_core::known_at(event, until) => {
            held.lock().expect("import lock poisoned; this is a bug").push(event.clone());
            false
        }
        _ => true,
    });
    let report = lake.import_events(events).await.with_context(|| format!("importing {}", events_file.display()))?;
    for error in report.rejected.iter().take(20) {
        eprintln!("import: rejected {}: {error}", events_file.display());
    }
    if report.rejected.len() > 20 {
        eprintln!("import: ... and {} more rejected", report.rejected.len() - 20);
    }
    eprintln!(
        "import: {} events accepted, {} rejected -> events version {}",
        report.accepted,
        report.rejected.len(),
        report.version
    );
    let later = std::mem::take(&mut *later.lock().expect("import lock poisoned; this is a bug"));
    Ok(later)
}

pub async fn info(lake: &Lake) -> Result<()> {
    let infos = lake.info().await?;
    if infos.is_empty() {
        println!("the lake at {} is empty: sellable lake import --from DIR|FILE", lake.location());
    }
    println!("{:<12} {:>8} {:>9} {:>12} {:>10}  time range", "dataset", "version", "versions", "rows", "size");
    for info in infos {
        let range = info.range.map_or(String::new(), |(first, last)| format!("{} .. {}", format_millis(first), format_millis(last)));
        let size = format!("{:.1} MiB", info.bytes as f64 / (1 << 20) as f64);
        println!("{:<12} {:>8} {:>9} {:>12} {:>10}  {range}", info.name, info.version, info.versions, info.rows, size);
    }
    Ok(())
}
