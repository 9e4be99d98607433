//! `sellable run`: the loop between the layers (sellable-lifecycle) on Redis and the lake, all of
//! it in one process or one role of it (`--role batch|fold|archive|serve`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sellable_core::EventIntake;
use sellable_lifecycle::{EpochSpeed, LifecycleConfig};
use sellable_serving::Serving;
use sellable_speed::stream::StreamConfig;

use sellable_core::event::format_millis;

use crate::cli::{Role, RunArgs};
use crate::commands::{batch, serve, speed};

pub async fn run(args: &RunArgs) -> Result<()> {
    let lake = Arc::new(args.lake.open()?);
    if matches!(args.role, Role::All | Role::Batch) && lake.batch_view_asof().await?.is_none() {
        let asof = lake.last_arrival().await?.context("the lake has no events: import some first (sellable lake import)")?;
        batch::nightly(&lake, asof, args.lake.fold_config()).await?;
    }
    let config = LifecycleConfig {
        url: args.server.redis.clone(),
        stream: args.stream.clone(),
        namespace: args.server.namespace.clone(),
        fold: args.lake.fold_config(),
        workers: if args.role == Role::All { args.workers.max(1) } else { args.workers },
        // the catalog's names, for the doors of the fold workers and the archiver; a serving
        // process reads SKUs from its epoch's store and keeps none of them
        known: if args.role == Role::Serve { None } else { Some(speed::known_names(&lake).await?) },
        partitions: args.partitions,
        catch_up_timeout: Duration::from_secs(600),
        // serving processes beside this one follow within a second
        retire_after: if args.role == Role::Batch { Duration::from_secs(3) } else { Duration::ZERO },
        // nights a whole number of days apart fold the day into the last night's state
        incremental: whole_days(args.nightly_every).is_some(),
    };
    match args.role {
        Role::Fold => {
            let workers = config.workers.max(1);
            let config = LifecycleConfig { workers, ..config };
            eprintln!("run: {workers} fold worker(s) named {} per open epoch of {}", args.consumer, config.registry_key());
            sellable_lifecycle::fold_role(&config, &args.consumer, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            Ok(())
        }
        Role::Archive => {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let archiver = spawn_archiver(lake, &config, None, stopped);
            let waited = wait_for_ctrl_c().await;
            let _ = stop.send(true);
            archiver.await.context("the archiver panicked; this is a bug")??;
            waited
        }
        Role::Serve => {
            let cutoff = first_batch_view(&lake).await;
            let speed = sellable_lifecycle::epoch_speed(&config, cutoff).await?;
            wait_published(&speed, cutoff).await;
            let models = serve::model_book(&args.models.models, None)?;
            let serving = serve::load_serving(&lake, speed, args.rules.book()?, models, writes(&config, &lake, &crate::config::loaded().serve.decisions).await?).await?;
            sellable_lifecycle::follow(lake.clone(), serving.clone(), config, Duration::from_secs(1));
            serve::serve(serving, serve::Front::configured(args.listen)).await
        }
        Role::All | Role::Batch => {
            if config.workers == 0 {
                eprintln!("run: no fold workers in this process (--workers 0): each epoch waits for `--role fold` processes to fold it");
            }
            let epoch = sellable_lifecycle::start(&lake, &config).await?;
            eprintln!("run: epoch of cutoff {} caught up", format_millis(epoch.cutoff));
            let models = serve::model_book(&args.models.models, None)?;
            // only a process that answers requests logs decisions
            let decisions = sellable_serving::decisions::DecisionLogConfig { enabled: args.role == Role::All, ..crate::config::loaded().serve.decisions };
            let serving = serve::load_serving(&lake, epoch.speed.clone(), args.rules.book()?, models, writes(&config, &lake, &decisions).await?).await?;
            let every = Duration::from_secs_f64(args.nightly_every);
            if args.role == Role::All {
                return serve_loop(lake, serving, config, epoch, every, serve::Front::configured(args.listen)).await;
            }
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let nightly = spawn_nightly(lake, serving, config, epoch, every, stopped);
            let waited = wait_for_ctrl_c().await;
            let _ = stop.send(true);
            nightly.await.context("the nightly task panicked; this is a bug")?;
            waited
        }
    }
}

/// Where the serving processes of `config` write: the ingestion stream `POST /v1/events` (and a
/// confirmed reservation) appends to, the reservations' holds in the base namespace, and the
/// decision log of `decisions` into `lake`.
pub async fn writes(config: &LifecycleConfig, lake: &Arc<sellable_batch::Lake>, decisions: &sellable_serving::decisions::DecisionLogConfig) -> Result<serve::Writes> {
    let intake: Arc<dyn EventIntake> = Arc::new(sellable_speed::stream::StreamIntake::new(&config.url, &config.stream)?);
    let holds = sellable_speed::holds::RedisHolds::connect(&config.url, &config.namespace).await?;
    Ok(serve::Writes { intake: Some(intake), holds: Some(Arc::new(holds)), decisions: serve::decision_log(lake, decisions)? })
}

/// Every role in one process: the archiver (its lag in `serving`'s metrics), the nightly
/// cutovers over `epoch`, and the REST API as `front` says, until Ctrl-C.
pub async fn serve_loop(
    lake: Arc<sellable_batch::Lake>,
    serving: Arc<Serving>,
    config: LifecycleConfig,
    epoch: EpochSpeed,
    every: Duration,
    front: serve::Front,
) -> Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let archiver = spawn_archiver(lake.clone(), &config, Some(serving.clone()), stopped.clone());
    let nightly = spawn_nightly(lake, serving.clone(), config, epoch, every, stopped);
    let served = serve::serve(serving, front).await;
    let _ = stop.send(true);
    nightly.await.context("the nightly task panicked; this is a bug")?;
    archiver.await.context("the archiver panicked; this is a bug")??;
    served
}

/// The cutoff of the lake's batch view, waiting (and saying so) until the batch role has made one.
async fn first_batch_view(lake: &sellable_batch::Lake) -> sellable_core::Millis {
    loop {
        match lake.batch_view_asof().await {
            Ok(Some(asof)) => return asof,
            Err(error) => {
                eprintln!("run: the batch view in {} could not be read ({error}); trying again", lake.location());
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Ok(None) => {
                eprintln!("run: no batch view in {} yet: waiting for the batch role", lake.location());
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Waits (and says so) until the batch role has published the batch view of `cutoff` into its
/// epoch's namespace: a serving process reads the rows there and keeps none itself.
async fn wait_published(speed: &sellable_speed::SpeedView, cutoff: sellable_core::Millis) {
    loop {
        match speed.batch_meta().await {
            Ok(Some(meta)) if meta.asof == cutoff => return,
            Ok(_) => eprintln!("run: the batch view of {} is not published yet: waiting for the batch role", format_millis(cutoff)),
            Err(error) => eprintln!("run: cannot read the epoch's namespace yet ({error}): waiting"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn wait_for_ctrl_c() -> Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}

/// The archiver of the ingestion stream, as a task; with a `serving`, its lag is recorded in
/// that server's metrics every second.
fn spawn_archiver(
    lake: Arc<sellable_batch::Lake>,
    config: &LifecycleConfig,
    serving: Option<Arc<Serving>>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<()>> {
    let mut stream = StreamConfig::new(&config.stream, sellable_speed::archive::ARCHIVE_GROUP, "archiver");
    stream.known = config.known.clone();
    let progress = Arc::new(AtomicI64::new(0));
    if let Some(serving) = serving {
        tokio::spawn(record_archive_lag(serving, config.clone(), progress.clone(), stopped.clone()));
    }
    let url = config.url.clone();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let stats = sellable_speed::archive::run_archiver(&url, lake.as_ref(), stream, Duration::from_secs(1), None, Some(progress), shutdown).await?;
        eprintln!("run: archived {} events in {} batches", stats.archived, stats.batches);
        Ok(())
    })
}

/// Every second until stopped, the archiver's lag: 0 once it has read the whole stream, else
/// now minus the time of the last entry it archived (`archived`).
async fn record_archive_lag(serving: Arc<Serving>, config: LifecycleConfig, archived: Arc<AtomicI64>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut probe = None;
    loop {
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if probe.is_none() {
            probe = sellable_speed::stream::GroupProbe::open(&config.url).await.ok();
        }
        let caught_up = match probe.as_mut() {
            Some(probe) => probe.caught_up(&config.stream, sellable_speed::archive::ARCHIVE_GROUP).await,
            None => Ok(false),
        };
        if caught_up.is_err() {
            probe = None; // connect again at the next tick
        }
        let lag = match caught_up {
            Ok(true) => 0.0,
            _ => (chrono::Utc::now().timestamp_millis() - archived.load(Ordering::Relaxed)).max(0) as f64 / 1000.0,
        };
        serving.record_archive_lag(lag);
    }
}

/// `seconds` in milliseconds, if they are a whole number of days.
fn whole_days(seconds: f64) -> Option<i64> {
    const DAY_MS: i64 = 86_400_000;
    let ms = (seconds * 1_000.0).round() as i64;
    (ms > 0 && ms % DAY_MS == 0 && (seconds * 1_000.0 - ms as f64).abs() < 0.5).then_some(ms)
}

/// The latest cutoff of the grid `start + n·every` (n ≥ 1) at or before `now`, if there is one.
fn on_grid(start: i64, now: i64, every: i64) -> Option<i64> {
    (now >= start + every).then(|| start + (now - start) / every * every)
}

/// Every `every`, the nightly job as of now and the cutover to it; a failed cutover keeps the
/// epoch that serves, and is tried again at the next tick. Every second in between, the epoch's
/// speed view is checked: one that lost its catch-up mark (Redis came back empty, its stream with
/// it) is replaced at once by a cutover to now, which rebuilds everything from the lake as it is
/// (answers are conservative meanwhile).
fn spawn_nightly(
    lake: Arc<sellable_batch::Lake>,
    serving: Arc<Serving>,
    config: LifecycleConfig,
    mut epoch: EpochSpeed,
    every: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut next = tokio::time::Instant::now() + every;
        loop {
            tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            // Redis away: nothing to rebuild from yet (answers are conservative meanwhile)
            let lost = matches!(epoch.speed.caught_up_to().await, Ok(mark) if mark != Some(epoch.cutoff));
            if lost {
                eprintln!("run: the speed view of {} lost what it held (Redis came back empty?): rebuilding from the lake", format_millis(epoch.cutoff));
            } else if tokio::time::Instant::now() < next {
                continue;
            }
            // nights a whole number of days apart stay on the grid of the epoch's cutoff, so that
            // each can be folded from the one before (a rebuild cuts over to now)
            let cutoff = match whole_days(every.as_secs_f64()) {
                Some(every) if !lost && config.incremental => match on_grid(epoch.cutoff, serving.now(), every) {
                    Some(cutoff) => cutoff,
                    // the wall clock is not at the grid's next cutoff yet
                    None => continue,
                },
                _ => serving.now(),
            };
            next = tokio::time::Instant::now() + every;
            epoch = match sellable_lifecycle::cutover(&lake, &serving, epoch, &config, cutoff).await {
                Ok((next, report)) => {
                    serving.record_cutover(report.elapsed.as_secs_f64());
                    let night = match &report.night {
                        Some(sellable_batch::Night::Incremental { from }) => format!(", the night folded from {}'s", format_millis(*from)),
                        Some(sellable_batch::Night::Full { why }) => format!(", the night recomputed: {why}"),
                        None => String::new(),
                    };
                    eprintln!(
                        "run: cutover to {} in {:.1} s (events version {}, stream after {}{night})",
                        format_millis(report.to),
                        report.elapsed.as_secs_f64(),
                        report.events_version,
                        report.position
                    );
                    if lost {
                        eprintln!("run: the speed view of {} is whole again", format_millis(next.cutoff));
                    }
                    next
                }
                Err((old, error)) => {
                    eprintln!("run: cutover to {} failed ({error}); the epoch of {} keeps serving", format_millis(cutoff), format_millis(old.cutoff));
                    old
                }
            };
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{on_grid, whole_days};

    #[test]
    fn nights_a_whole_number_of_days_apart_stay_on_the_grid_of_the_first_cutoff() {
        const DAY: i64 = 86_400_000;
        assert_eq!(whole_days(86_400.0), Some(DAY));
        assert_eq!(whole_days(2.0 * 86_400.0), Some(2 * DAY));
        assert_eq!(whole_days(3_600.0), None);
        assert_eq!(whole_days(86_400.5), None);
        assert_eq!(whole_days(0.0), None);
        let start = 1_767_225_600_123;
        // a tick a little late, or a whole night late: the grid's last cutoff
        assert_eq!(on_grid(start, start + DAY + 900, DAY), Some(start + DAY));
        assert_eq!(on_grid(start, start + 3 * DAY - 1, DAY), Some(start + 2 * DAY));
        // a tick whose wall clock is not there yet: none
        assert_eq!(on_grid(start, start + DAY - 5, DAY), None);
    }
}
