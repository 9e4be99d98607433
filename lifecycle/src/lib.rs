//! sellable-lifecycle: the loop between the layers. It is the one library crate that sees the
//! batch layer, the speed layer and serving together (they meet only through `core`'s traits);
//! the binary's long-running commands and the lifecycle tests call it.
//!
//! An **epoch** is a batch view as of a cutoff `C` and the speed view that holds exactly the
//! events the batch view does not: its own Redis namespace (`<namespace>:e<C>`), caught up from
//! the lake, and its own consumer group on the ingestion stream (`<namespace>-e<C>`).
//!
//! **The cutover** to a new cutoff `C` ([`cutover`]) never loses nor counts twice an event:
//! 1. it pins the lake's `events` at its current version `V` and reads the archiver's position
//!    recorded in it, `P`: the stream entries at or before `P` are in `V`, none after;
//! 2. the nightly job computes the batch view of `C` from `V` (the events of `V` known at `C`),
//!    and it is published into the new epoch's namespace, one row per SKU of the catalog beside
//!    the SKU's speed state (serving reads both per request and holds neither);
//! 3. the new speed view folds the events of `V` that arrived after `C` (`speed::catch_up`) and
//!    every stream entry after `P`, whatever its arrival, through its own fold workers: together
//!    with the batch view, every accepted event exactly once;
//! 4. once its workers have read the whole stream, serving swaps to the new epoch atomically
//!    (`Serving::swap_epoch`: a request sees one epoch or the other, never a mix);
//! 5. the old epoch's workers stop, its group and its namespace are dropped.
//!
//! A process stopped in the middle of it leaves nothing in Redis for good: an epoch is named in
//! the registry from before its namespace is first written until it is dropped, and [`start`]
//! retires every epoch the registry names but the lake's current one.
//!
//! An epoch's fold workers run in the process that opened it (`LifecycleConfig::workers`), in
//! processes of their own that follow the registry of open epochs ([`fold_role`],
//! `sellable run --role fold`), or both: they are consumers of one group.
//!
//! Tests: `tests/it/` (events streamed across two cutovers, every answer checked against `core`'s
//! fold of the events accepted so far, and the lake against the stream).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sellable_batch::{BatchError, Lake, Progress};
use sellable_core::{BatchMeta, FoldConfig, KnownIds, Millis};
use sellable_serving::Serving;
use sellable_speed::registry::Registry;
use sellable_speed::stream::{StreamConfig, Workers, WorkersReport};
use sellable_speed::{catch_up, CatchUpSource, SpeedError, SpeedView};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Speed(#[from] SpeedError),
    #[error("the speed view of cutoff {cutoff} did not read the whole stream within {seconds} s; the old epoch keeps serving")]
    NotCaughtUp { cutoff: Millis, seconds: u64 },
    #[error("the fold workers of cutoff {cutoff} stopped: {reason}")]
    Workers { cutoff: Millis, reason: String },
}

/// Where the epochs live and how they fold.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// The Redis of the speed views and of the ingestion stream.
    pub url: String,
    /// The ingestion stream (`POST /v1/events` with an intake, `sellable publish`).
    pub stream: String,
    /// Prefix of every epoch's namespace and consumer group.
    pub namespace: String,
    pub fold: FoldConfig,
    /// Fold workers per epoch in the process that opens it (0: only fold roles fold it).
    pub workers: usize,
    /// The catalog names the fold workers' door checks, if any.
    pub known: Option<Arc<KnownIds>>,
    /// Partitions of each new epoch's namespace (0: sized by the catalog, `speed::partitions_for`).
    /// A new count takes effect at the next epoch: the cutover is the migration.
    pub partitions: u64,
    /// How long a new epoch may take to read the whole stream before the cutover gives up.
    pub catch_up_timeout: Duration,
    /// How long the old epoch stays readable after a cutover, for the serving processes that
    /// follow the epochs ([`follow`]) to swap too.
    pub retire_after: Duration,
    /// Whether a cutover's nightly job folds the events since the last one into its state
    /// ([`Lake::nightly_incremental`]: cutoffs a whole number of days apart) instead of
    /// recomputing every event.
    pub incremental: bool,
}

impl LifecycleConfig {
    /// The Redis namespace and the consumer group of the epoch of `cutoff`.
    pub fn epoch_names(&self, cutoff: Millis) -> (String, String) {
        (format!("{}:e{cutoff}", self.namespace), format!("{}-e{cutoff}", self.namespace))
    }

    /// The partition count of a new epoch's namespace.
    pub fn epoch_partitions(&self) -> u64 {
        match (self.partitions, &self.known) {
            (0, Some(known)) => sellable_speed::partitions_for(known.skus.len()),
            (0, None) => sellable_speed::PARTITIONS,
            (partitions, _) => partitions,
        }
    }

    /// The registry of open epochs ([`Registry`]) that fold roles follow.
    pub fn registry_key(&self) -> String {
        format!("{}:{{epochs}}", self.namespace)
    }

    /// The stream config of the epoch of `cutoff`'s group, starting after `start`, for `consumer`.
    fn stream_config(&self, cutoff: Millis, start: &str, consumer: &str) -> StreamConfig {
        let mut stream = StreamConfig::new(&self.stream, &self.epoch_names(cutoff).1, consumer);
        stream.start = start.to_string();
        stream.known = self.known.clone();
        stream
    }
}

/// Fold workers of one epoch, running until stopped.
struct Folding {
    stop: tokio::sync::oneshot::Sender<()>,
    workers: tokio::task::JoinHandle<Result<WorkersReport, SpeedError>>,
}

impl Folding {
    fn spawn(config: &LifecycleConfig, speed: Arc<SpeedView>, stream: StreamConfig, count: usize) -> Folding {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let (url, workers) = (config.url.clone(), Workers::new(stream, count));
        let workers = tokio::spawn(async move { sellable_speed::stream::run_workers(&url, speed, workers, shutdown).await });
        Folding { stop, workers }
    }

    /// Stops the workers after their current step; their failure is logged.
    async fn stop(self, cutoff: Millis) {
        let _ = self.stop.send(());
        match self.workers.await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, cutoff, "the epoch's fold workers had failed"),
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => {}
        }
    }
}

/// One epoch's speed view and the fold workers that keep it current.
pub struct EpochSpeed {
    pub cutoff: Millis,
    /// The batch view published into its namespace.
    pub batch: BatchMeta,
    pub namespace: String,
    pub group: String,
    pub speed: Arc<SpeedView>,
    /// The workers this process runs for it (none with `LifecycleConfig::workers` 0).
    local: Option<Folding>,
    registry: Registry,
}

impl EpochSpeed {
    /// Opens the epoch of `batch`: the batch view published into its namespace (a row per SKU
    /// of the lake's catalog), its speed view caught up from `lake` (pinned to the version the
    /// batch view was computed from), and its group for the stream entries after `position`,
    /// opened in the registry for fold roles and folded here by `config.workers` workers. It
    /// starts clean: whatever an interrupted attempt left in its namespace and group (built from
    /// another version of the lake, perhaps) is dropped first.
    pub async fn open(lake: &Lake, config: &LifecycleConfig, position: &str) -> Result<EpochSpeed, LifecycleError> {
        let (batch, rows) = lake.load_published().await?;
        let cutoff = batch.asof;
        let (namespace, group) = config.epoch_names(cutoff);
        // named before its namespace is written: a stop before it is open leaves it to retire
        let registry = Registry::connect(&config.url, &config.registry_key()).await?;
        let speed = Arc::new(SpeedView::redis(&config.url, &namespace, config.fold).await?);
        registry.opening(cutoff).await?;
        let opened = async {
            speed.clear().await?;
            speed.set_partitions(config.epoch_partitions()).await?;
            let published = speed.publish(&batch, rows).await?;
            tracing::info!(cutoff, skus = published, "batch view published into the epoch's namespace");
            sellable_speed::stream::destroy_group(&config.url, &config.stream, &group).await?;
            let caught = catch_up(lake, &speed, cutoff, CatchUpSource::Log, None).await?;
            // complete only once the stream after `position` is folded too ([`EpochSpeed::wait_caught_up`])
            speed.unmark_caught_up().await?;
            tracing::info!(cutoff, events = caught.read, position, "epoch caught up from the lake; folding the stream after the archived position");
            let stream = config.stream_config(cutoff, position, "lifecycle");
            sellable_speed::stream::ensure_group(&config.url, &stream).await?;
            registry.open(cutoff, position).await?;
            Ok::<_, LifecycleError>(stream)
        };
        let stream = match opened.await {
            Ok(stream) => stream,
            Err(error) => {
                // what it wrote is dropped now (no longer open, should it have been recorded so);
                // if that fails too, the registry keeps it named for the next start to retire
                let dropped = async {
                    registry.close(cutoff).await?;
                    retire(config, &registry, cutoff, &speed).await
                };
                if let Err(dropped) = dropped.await {
                    tracing::warn!(error = %dropped, cutoff, "could not drop the epoch that failed to open");
                }
                return Err(error);
            }
        };
        let local = (config.workers > 0).then(|| Folding::spawn(config, speed.clone(), stream, config.workers));
        Ok(EpochSpeed { cutoff, batch, namespace, group, speed, local, registry })
    }

    /// Waits until the epoch's workers have read and folded every entry the stream holds, then
    /// marks the view caught up from its cutoff (serving trusts it from then on).
    pub async fn wait_caught_up(&self, config: &LifecycleConfig) -> Result<(), LifecycleError> {
        let started = Instant::now();
        let mut probe = sellable_speed::stream::GroupProbe::open(&config.url).await?;
        loop {
            if probe.caught_up(&config.stream, &self.group).await? {
                self.speed.mark_caught_up(self.cutoff).await?;
                return Ok(());
            }
            if self.local.as_ref().is_some_and(|local| local.workers.is_finished()) {
                return Err(LifecycleError::Workers { cutoff: self.cutoff, reason: "they ended".to_string() });
            }
            if started.elapsed() > config.catch_up_timeout {
                return Err(LifecycleError::NotCaughtUp { cutoff: self.cutoff, seconds: config.catch_up_timeout.as_secs() });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes it in the registry, stops the workers, drops the group and the namespace (after
    /// fold roles have had the time to see it closed and stop theirs).
    pub async fn close(self, config: &LifecycleConfig) -> Result<(), LifecycleError> {
        self.registry.close(self.cutoff).await?;
        if let Some(local) = self.local {
            local.stop(self.cutoff).await;
        }
        tokio::time::sleep(4 * FOLLOW_EVERY).await;
        retire(config, &self.registry, self.cutoff, &self.speed).await
    }
}

/// How often fold roles read the registry of open epochs.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// Drops the group and the namespace of the epoch of `cutoff`, closed in `registry`; then forgets
/// it there (a namespace that could not be cleared stays named, for the next start to retire).
async fn retire(config: &LifecycleConfig, registry: &Registry, cutoff: Millis, speed: &SpeedView) -> Result<(), LifecycleError> {
    sellable_speed::stream::destroy_group(&config.url, &config.stream, &config.epoch_names(cutoff).1).await?;
    match speed.clear().await {
        Ok(()) => registry.retired(cutoff).await?,
        Err(error) => tracing::warn!(%error, cutoff, "could not clear the retired epoch's namespace"),
    }
    Ok(())
}

/// The lake pinned to `version` (its current one if `None`), and the archiver's position
/// recorded in it.
async fn pin(lake: &Lake, stream: &str, version: Option<u64>) -> Result<(Lake, String), LifecycleError> {
    let version = match version {
        Some(version) => version,
        None => lake.events_version().await?,
    };
    let pinned = lake.pinned(version);
    let position = pinned.position(&sellable_speed::archive::position_key(stream)).await?.unwrap_or_else(|| "0".to_string());
    Ok((pinned, position))
}

/// The epoch of the lake's current batch view, at start-up (a first start, or after a crash,
/// even in the middle of a cutover): its speed view is rebuilt from the version of the lake the
/// batch view was computed from, and the stream after that version's archive position.
pub async fn start(lake: &Lake, config: &LifecycleConfig) -> Result<EpochSpeed, LifecycleError> {
    let (pinned, position) = pin(lake, &config.stream, lake.batch_view_events_version().await?).await?;
    let epoch = EpochSpeed::open(&pinned, config, &position).await?;
    let cutoff = epoch.cutoff;
    // epochs a stopped process left open, half opened or not yet retired (a cutover it did not
    // finish) are closed, and retired once fold roles have had the time to stop their workers
    let mut stale: BTreeSet<Millis> = epoch.registry.list().await?.into_keys().collect();
    stale.extend(epoch.registry.pending().await?);
    stale.remove(&cutoff);
    for &stale in &stale {
        epoch.registry.close(stale).await?;
        tracing::info!(stale, "closing an epoch an earlier run left open or not retired");
    }
    if !stale.is_empty() {
        tokio::time::sleep(4 * FOLLOW_EVERY).await;
    }
    for stale in stale {
        retire(config, &epoch.registry, stale, &*epoch_speed(config, stale).await?).await?;
    }
    epoch.wait_caught_up(config).await?;
    Ok(epoch)
}

/// What a cutover did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutoverReport {
    pub from: Millis,
    pub to: Millis,
    pub events_version: u64,
    pub position: String,
    pub elapsed: Duration,
    /// How its nightly job was computed, when nights are incremental.
    pub night: Option<sellable_batch::Night>,
}

/// The cutover of `serving` from `old` to the epoch of `cutoff` (the module's steps). On an
/// error the old epoch keeps serving, and the new one is dropped.
pub async fn cutover(lake: &Lake, serving: &Serving, old: EpochSpeed, config: &LifecycleConfig, cutoff: Millis) -> Result<(EpochSpeed, CutoverReport), (EpochSpeed, LifecycleError)> {
    let started = Instant::now();
    let prepared = async {
        let (pinned, position) = pin(lake, &config.stream, None).await?;
        let night = if config.incremental {
            Some(pinned.nightly_incremental(cutoff, config.fold, false, &Progress::hidden()).await?.2)
        } else {
            pinned.nightly(cutoff, config.fold, &Progress::hidden()).await?;
            None
        };
        let epoch = EpochSpeed::open(&pinned, config, &position).await?;
        if let Err(error) = epoch.wait_caught_up(config).await {
            let _ = epoch.close(config).await;
            return Err(error);
        }
        Ok::<_, LifecycleError>((epoch, pinned.events_version().await?, position, night))
    };
    let (epoch, events_version, position, night) = match prepared.await {
        Ok(prepared) => prepared,
        Err(error) => return Err((old, error)),
    };
    serving.swap_epoch(epoch.batch.clone(), epoch.speed.clone());
    let from = old.cutoff;
    tokio::time::sleep(config.retire_after).await;
    if let Err(error) = old.close(config).await {
        tracing::warn!(%error, from, "could not retire the old epoch");
    }
    let report = CutoverReport { from, to: cutoff, events_version, position, elapsed: started.elapsed(), night };
    tracing::info!(?report, "cutover done");
    Ok((epoch, report))
}

/// The speed view of the epoch of `cutoff`, as a serving process that does not run the cutover
/// reads it (the batch role's workers keep it).
pub async fn epoch_speed(config: &LifecycleConfig, cutoff: Millis) -> Result<Arc<SpeedView>, LifecycleError> {
    Ok(Arc::new(SpeedView::redis_lazy(&config.url, &config.epoch_names(cutoff).0, config.fold).await?))
}

/// For a serving process beside the batch role: every `every`, if the lake has a new batch view
/// and its epoch's speed view is marked caught up, swaps `serving` to them.
pub fn follow(lake: Arc<Lake>, serving: Arc<Serving>, config: LifecycleConfig, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let cutoff = match lake.batch_view_asof().await {
                Ok(Some(cutoff)) => cutoff,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%error, "follow: the lake's batch view could not be read; the epoch stays");
                    continue;
                }
            };
            if cutoff == serving.epoch().batch.asof {
                continue;
            }
            let followed = async {
                let speed = epoch_speed(&config, cutoff).await?;
                if speed.caught_up_to().await? != Some(cutoff) {
                    return Ok::<_, LifecycleError>(false);
                }
                // the batch view published with the epoch: the pair of one cutoff
                let Some(batch) = speed.batch_meta().await?.filter(|batch| batch.asof == cutoff) else {
                    return Ok(false);
                };
                serving.swap_epoch(batch, speed);
                Ok(true)
            };
            if let Err(error) = followed.await {
                tracing::warn!(%error, cutoff, "could not follow the new epoch yet");
            }
        }
    })
}

/// Fold workers for every open epoch in the registry, as a process of its own (`sellable run
/// --role fold`), with consumers named `consumer`: every [`FOLLOW_EVERY`] it starts
/// `config.workers` workers for each epoch opened since (or whose workers ended) and stops those
/// of epochs closed, until `shutdown`. A consumer that died with entries pending is replaced by
/// one of the same name (which reads them first) or, after a while, by any other.
pub async fn fold_role(config: &LifecycleConfig, consumer: &str, shutdown: impl std::future::Future<Output = ()>) -> Result<(), LifecycleError> {
    let registry = Registry::connect(&config.url, &config.registry_key()).await?;
    let mut running: std::collections::BTreeMap<Millis, Folding> = std::collections::BTreeMap::new();
    tokio::pin!(shutdown);
    loop {
        match registry.list().await {
            Ok(open) => {
                // epochs closed, and epochs whose workers ended (started again below if still open)
                let done: Vec<Millis> =
                    running.iter().filter(|(cutoff, folding)| !open.contains_key(*cutoff) || folding.workers.is_finished()).map(|(cutoff, _)| *cutoff).collect();
                for cutoff in done {
                    if let Some(folding) = running.remove(&cutoff) {
                        folding.stop(cutoff).await;
                        tracing::info!(cutoff, "stopped folding the epoch");
                    }
                }
                for (cutoff, start) in open {
                    if running.contains_key(&cutoff) {
                        continue;
                    }
                    let speed = epoch_speed(config, cutoff).await?;
                    running.insert(cutoff, Folding::spawn(config, speed, config.stream_config(cutoff, &start, consumer), config.workers));
                    tracing::info!(cutoff, consumer, "folding the epoch");
                }
            }
            Err(error) => tracing::warn!(%error, "reading the open epochs failed; retrying"),
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
    for (cutoff, folding) in running {
        folding.stop(cutoff).await;
    }
    Ok(())
}
