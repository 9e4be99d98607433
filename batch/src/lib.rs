//! sellable-batch: the batch layer. The lake is a directory of Lance datasets (`events`, `skus`,
//! `nodes`, and the computed `batch_view` and `batch_deltas`); DataFusion computes the batch view
//! from the events known at a cutoff.
//!
//! The batch view holds, per sku×node, exactly the [`NodeState`] that `core`'s fold gives for the
//! same events: the sums, the latest absolute reading (anchor) and the on-hand deltas after it,
//! so that serving can merge it with the speed view exactly. The SQL's arithmetic is generated
//! from [`sellable_core::fold::effect`], so there is one definition of what an event does.
//!
//! Tests: `tests/it/` (import, batch view == core fold).

pub mod decisions;
mod distributed;
pub mod features;
mod incremental;
mod publish;
mod shares;
pub mod trainset;
mod versions;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, RecordBatchIterator, RecordBatchReader, StringArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use datafusion::execution::memory_pool::{FairSpillPool, GreedyMemoryPool, MemoryPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::TryStreamExt;
use lance::dataset::{Dataset, WriteMode, WriteParams};
use sellable_core::catalog::{node_schema, nodes_from_batch, nodes_to_batch, sku_schema, skus_from_batch, skus_to_batch};
use sellable_core::event::{event_schema, events_from_batch, events_to_batch, DecodeError, InputError};
use sellable_core::fold::{effect, Anchor, EventKey, SkuNode};
use sellable_core::{BatchView, Event, EventKind, FoldConfig, Millis, NodeInfo, NodeState, SkuInfo};

pub use incremental::Night;
pub use distributed::{executor_functions, Engine, LakeLogicalCodec, LakePhysicalCodec, MAX_PLAN_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("lance dataset {dataset}: {source}")]
    Lance { dataset: String, source: lance::Error },
    #[error("query: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
    #[error("input: {0}")]
    Input(#[from] InputError),
    #[error("{dataset}: {message}")]
    Corrupt { dataset: String, message: String },
    #[error("scratch file {path}: {message}")]
    Scratch { path: String, message: String },
    #[error("{0}")]
    Location(String),
    #[error("the lake at {0} has no {1} yet: {2}")]
    Missing(String, &'static str, &'static str),
}

const EVENTS: &str = "events";
const SKUS: &str = "skus";
const NODES: &str = "nodes";
const BATCH_VIEW: &str = "batch_view";
const BATCH_DELTAS: &str = "batch_deltas";
/// Scratch space of the nightly job: the events known at the cutoff being computed, when they
/// are too many to hold in memory, in shares of the nodes.
const SCRATCH: &str = "scratch";
/// Prefix of the commit properties of `batch_deltas` that record its view's [`ViewLineage`].
const LINEAGE_PREFIX: &str = "sellable.view.";

/// What the stored batch view was computed from, committed with its deltas (the second of its two
/// writes) as properties of that version: the newest deltas name the version of `batch_view`
/// they pair with, so a run that stopped between its writes leaves the last whole pair readable.
/// A training set whose replay starts at the view's cutoff reads the view instead of computing it
/// again while its cutoff, events version and lateness are those it would compute from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ViewLineage {
    asof: Millis,
    events_version: u64,
    lateness_ms: Millis,
    view_version: u64,
}

impl ViewLineage {
    const NAMES: [&'static str; 4] = ["asof", "events_version", "lateness_ms", "batch_view_version"];

    fn values(&self) -> [i64; 4] {
        [self.asof, self.events_version as i64, self.lateness_ms, self.view_version as i64]
    }

    fn to_properties(self) -> std::collections::HashMap<String, String> {
        Self::NAMES.iter().zip(self.values()).map(|(name, value)| (format!("{LINEAGE_PREFIX}{name}"), value.to_string())).collect()
    }

    /// `None` when the properties do not hold what [`ViewLineage::to_properties`] writes.
    fn parse(properties: &std::collections::HashMap<String, String>) -> Option<ViewLineage> {
        let mut values = [0i64; 4];
        for (name, value) in Self::NAMES.iter().zip(&mut values) {
            *value = properties.get(&format!("{LINEAGE_PREFIX}{name}"))?.parse().ok()?;
        }
        let [asof, events_version, lateness_ms, view_version] = values;
        Some(ViewLineage { asof, events_version: events_version as u64, lateness_ms, view_version: view_version as u64 })
    }
}

/// The tables of [`Lake::analytics_session`] and their datasets: the events, the catalog, the
/// batch view, the features, the decision log, and the training set's orders with their labels.
pub const ANALYTICS_TABLES: [(&str, &str); 7] = [
    ("events", EVENTS),
    ("skus", SKUS),
    ("nodes", NODES),
    ("batch_view", BATCH_VIEW),
    ("features", features::FEATURES),
    ("decisions", decisions::DECISIONS),
    ("orders", trainset::TRAINSET),
];

/// Rows per batch written to Lance.
const WRITE_BATCH: usize = 65_536;

impl Lake {
    /// Appends `events` as one new version of `events` whose commit also records `position` under
    /// `key` (a stream's last archived entry id): the data and the position land together or not
    /// at all, so an archiver that crashed after the commit knows what it had written.
    pub async fn append_events_at(&self, events: &[Event], key: &str, position: &str) -> Result<u64, BatchError> {
        let batch = events_to_batch(events);
        let schema = batch.schema();
        let reader = RecordBatchIterator::new(vec![Ok(batch)], schema);
        let properties = std::collections::HashMap::from([(format!("{POSITION_PREFIX}{key}"), position.to_string())]);
        self.write_with(EVENTS, reader, WriteMode::Append, Some(properties)).await
    }

    /// The newest position recorded under `key` by [`Lake::append_events_at`], looking back
    /// through the versions of `events` (newest first); `None` when none recorded one.
    pub async fn position(&self, key: &str) -> Result<Option<String>, BatchError> {
        self.newest_commit_property(EVENTS, &format!("{POSITION_PREFIX}{key}")).await
    }

    /// The newest value of the commit property `key` of `dataset`, looking back through its
    /// versions (newest first); `None` when no version recorded one, or no dataset.
    async fn newest_commit_property(&self, name: &'static str, key: &str) -> Result<Option<String>, BatchError> {
        let dataset = match self.dataset(name, "").await {
            Ok(dataset) => dataset,
            Err(BatchError::Missing(..)) => return Ok(None),
            Err(error) => return Err(error),
        };
        for version in (1..=dataset.version_id()).rev() {
            let transaction = dataset.read_transaction_by_version(version).await.map_err(self.lance_error(name))?;
            if let Some(value) = transaction.and_then(|t| t.transaction_properties).and_then(|properties| properties.get(key).cloned()) {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }
}

/// Prefix of the commit properties that record an archiver's position.
const POSITION_PREFIX: &str = "sellable.position.";

/// The lake is the archive the speed layer's archiver appends to.
impl sellable_core::EventArchive for Lake {
    fn position<'a>(&'a self, key: &'a str) -> sellable_core::view::BoxFuture<'a, Result<Option<String>, sellable_core::ViewError>> {
        Box::pin(async move { Ok(Lake::position(self, key).await?) })
    }

    fn append_at<'a>(&'a self, events: &'a [Event], key: &'a str, position: &'a str) -> sellable_core::view::BoxFuture<'a, Result<(), sellable_core::ViewError>> {
        Box::pin(async move {
            self.append_events_at(events, key, position).await?;
            Ok(())
        })
    }
}

/// The lake is the event log the speed layer catches up from (`sellable_speed::catch_up`).
impl sellable_core::EventLog for Lake {
    fn ids_arrived(&self, from: Millis, to: Millis) -> sellable_core::view::BoxFuture<'_, Result<Vec<(String, String)>, sellable_core::ViewError>> {
        Box::pin(async move { Ok(self.event_ids_arrived(from, to).await?) })
    }

    fn events_after(
        &self,
        cutoff: Millis,
    ) -> sellable_core::view::BoxFuture<'_, Result<Vec<Result<Event, DecodeError>>, sellable_core::ViewError>> {
        Box::pin(async move { Ok(Lake::events_after(self, cutoff).await?) })
    }
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    pub accepted: u64,
    /// Every rejected event, with its line or row and field.
    pub rejected: Vec<DecodeError>,
    /// The `events` dataset version the import created.
    pub version: u64,
}

/// What a batch run computed.
#[derive(Debug, Clone)]
pub struct BatchSummary {
    pub asof: Millis,
    pub sku_nodes: u64,
    pub deltas: u64,
    pub version: u64,
    /// The version of `batch_deltas` written with it.
    pub deltas_version: u64,
    /// How many shares of the nodes the events were computed in, one after the other (1 when
    /// they fit in memory).
    pub shares: usize,
}

/// A lake: a directory of Lance datasets, local or in an object store (`s3://bucket/prefix`).
#[derive(Debug, Clone)]
pub struct Lake {
    /// Where the datasets are: a local directory's path, or an object store's URI.
    location: String,
    /// Where the processes working on the lake keep their local files: the lake's own directory
    /// when it is local, else a directory of the system's temporary space named after the lake.
    local: PathBuf,
    /// Options of the object store (endpoint, credentials, ...), beside those of the environment.
    storage: Option<Arc<std::collections::HashMap<String, String>>>,
    /// Bytes one DataFusion query may hold before spilling.
    memory_limit: usize,
    /// Bytes of the events known at a cutoff the nightly job holds in memory; beyond, it splits
    /// them into shares of the nodes of about that many bytes each.
    scratch_limit: usize,
    /// Reads of `events` see this version, not the newest ([`Lake::pinned`]).
    events_at: Option<u64>,
    /// Where the nightly job's queries run ([`Lake::with_engine`]).
    engine: Engine,
}

impl Lake {
    pub fn open(root: &Path) -> Result<Lake, BatchError> {
        std::fs::create_dir_all(root).map_err(|source| BatchError::Input(InputError::Io {
            path: root.display().to_string(),
            source,
        }))?;
        let root = root.canonicalize().map_err(|source| BatchError::Input(InputError::Io {
            path: root.display().to_string(),
            source,
        }))?;
        let location = root.to_str().ok_or_else(|| BatchError::Location(format!("the lake's path {} is not UTF-8", root.display())))?.to_string();
        Ok(Lake { location, local: root, storage: None, memory_limit: 0, scratch_limit: 0, events_at: None, engine: Engine::Local }.with_memory_limit(DEFAULT_MEMORY_LIMIT))
    }

    /// The lake at `location`: an object store's URI (`s3://bucket/prefix`, its endpoint and
    /// credentials from the usual `AWS_*` environment variables), else a local directory
    /// ([`Lake::open`]).
    pub fn at(location: &str) -> Result<Lake, BatchError> {
        let Some((scheme, rest)) = location.split_once("://") else {
            return Lake::open(Path::new(location));
        };
        let invalid = |why: &str| BatchError::Location(format!("the lake {location}: {why}"));
        if scheme != "s3" {
            return Err(invalid("a lake is a local directory or an s3:// URI"));
        }
        let bucket = rest.split('/').next().unwrap_or_default();
        if bucket.is_empty() {
            return Err(invalid("no bucket (s3://BUCKET/PREFIX)"));
        }
        let location = location.trim_end_matches('/').to_string();
        let local = std::env::temp_dir().join(format!("sellable-lake-{:016x}", fixed_hash(&location)));
        Ok(Lake { location, local, storage: None, memory_limit: 0, scratch_limit: 0, events_at: None, engine: Engine::Local }.with_memory_limit(DEFAULT_MEMORY_LIMIT))
    }

    /// The same lake, its object store configured with `options` (Lance's storage options:
    /// `aws_endpoint`, `aws_access_key_id`, ...) besides what the environment says.
    pub fn with_storage_options(self, options: std::collections::HashMap<String, String>) -> Lake {
        Lake { storage: Some(Arc::new(options)), ..self }
    }

    /// Whether `location` names a lake in an object store rather than a local directory.
    pub fn is_remote(location: &str) -> bool {
        location.contains("://")
    }

    /// The same lake, whose reads of `events` see `version` (as `events_version` gave it) while
    /// appends go on: a cutover computes its batch view and catches its speed view up from one
    /// version, and the archive's position recorded in that version says which stream entries
    /// it holds. Writes of other datasets are not affected.
    pub fn pinned(&self, version: u64) -> Lake {
        Lake { events_at: Some(version), ..self.clone() }
    }

    /// Bounds the memory of each DataFusion query ([`DEFAULT_MEMORY_LIMIT`] unless set): sorts,
    /// joins and aggregations spill to disk beyond it. Sets the scratch limit to a quarter of it
    /// ([`Lake::with_scratch_limit`]).
    pub fn with_memory_limit(self, bytes: usize) -> Lake {
        Lake { memory_limit: bytes, scratch_limit: bytes / 4, ..self }
    }

    /// Bounds the memory the nightly job holds the events known at a cutoff in (a quarter of
    /// the memory limit unless set): beyond it they are split by node into shares of about that
    /// size, written to scratch files, and computed one share at a time.
    pub fn with_scratch_limit(self, bytes: usize) -> Lake {
        Lake { scratch_limit: bytes, ..self }
    }

    /// The same lake, whose nightly job (batch view, features, training sets) runs its queries
    /// on `engine`: DataFusion in this process ([`Engine::Local`], the default) or a Ballista
    /// cluster. Both give the same rows.
    pub fn with_engine(self, engine: Engine) -> Lake {
        Lake { engine, ..self }
    }

    /// Where the lake is: its directory's path or its URI.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// A local directory for the files of the processes working on the lake (the nightly job's
    /// scratch space, a decision log's spill by default): the lake's directory when it is local.
    pub fn local_dir(&self) -> &Path {
        &self.local
    }

    /// The object store parameters of [`Lake::with_storage_options`], if any.
    fn store_params(&self) -> Option<lance::io::ObjectStoreParams> {
        let options = self.storage.as_ref()?.as_ref().clone();
        let accessor = lance::io::StorageOptionsAccessor::with_static_options(options);
        Some(lance::io::ObjectStoreParams { storage_options_accessor: Some(Arc::new(accessor)), ..Default::default() })
    }

    fn uri(&self, dataset: &str) -> String {
        format!("{}/{dataset}.lance", self.location)
    }

    fn lance_error(&self, dataset: &str) -> impl Fn(lance::Error) -> BatchError + '_ {
        let dataset = dataset.to_string();
        move |source| BatchError::Lance { dataset: dataset.clone(), source }
    }

    /// The newest version of the dataset `name`, `None` when the lake has none.
    async fn existing(&self, name: &str) -> Result<Option<Dataset>, BatchError> {
        let mut builder = lance::dataset::builder::DatasetBuilder::from_uri(self.uri(name));
        if let Some(options) = &self.storage {
            builder = builder.with_storage_options(options.as_ref().clone());
        }
        match builder.load().await {
            Ok(dataset) => Ok(Some(dataset)),
            Err(lance::Error::DatasetNotFound { .. }) => Ok(None),
            Err(source) => Err(BatchError::Lance { dataset: name.to_string(), source }),
        }
    }

    async fn dataset(&self, name: &'static str, hint: &'static str) -> Result<Dataset, BatchError> {
        let dataset = self.existing(name).await?.ok_or_else(|| BatchError::Missing(self.location.clone(), name, hint))?;
        match self.events_at.filter(|_| name == EVENTS) {
            Some(version) if version != dataset.version_id() => dataset.checkout_version(version).await.map_err(self.lance_error(name)),
            _ => Ok(dataset),
        }
    }

    async fn write(
        &self,
        name: &str,
        reader: impl RecordBatchReader + Send + 'static,
        mode: WriteMode,
    ) -> Result<u64, BatchError> {
        self.write_with(name, reader, mode, None).await
    }

    /// [`Lake::write`], recording `properties` in the version's commit (atomically with the data).
    async fn write_with(
        &self,
        name: &str,
        reader: impl RecordBatchReader + Send + 'static,
        mode: WriteMode,
        properties: Option<std::collections::HashMap<String, String>>,
    ) -> Result<u64, BatchError> {
        let params = self.write_params(name, mode, properties).await?;
        let dataset = Dataset::write(reader, self.uri(name).as_str(), Some(params)).await.map_err(self.lance_error(name))?;
        Ok(dataset.version_id())
    }

    /// How to write the dataset `name` in `mode`, recording `properties` in the commit.
    async fn write_params(&self, name: &str, mode: WriteMode, properties: Option<std::collections::HashMap<String, String>>) -> Result<WriteParams, BatchError> {
        // Append and overwrite create a missing dataset anyway; say so instead of being warned.
        let mode = if self.existing(name).await?.is_some() { mode } else { WriteMode::Create };
        Ok(WriteParams { mode, transaction_properties: properties.map(Arc::new), store_params: self.store_params(), ..WriteParams::default() })
    }

    /// Appends events as one new version of `events`. Bad events are skipped and reported; if
    /// the input cannot be read (anywhere in it), nothing is written and the lake keeps its
    /// version.
    pub async fn import_events(
        &self,
        events: impl Iterator<Item = Result<Event, DecodeError>> + Send + 'static,
    ) -> Result<ImportReport, BatchError> {
        let tally = Arc::new(Mutex::new((0u64, Vec::new())));
        let mut reader = EventBatches { events: Box::new(events), tally: tally.clone(), first: None };
        // Nothing valid to import: no new version.
        let version = match reader.next() {
            None => match self.dataset(EVENTS, "").await {
                Ok(dataset) => dataset.version_id(),
                Err(BatchError::Missing(..)) => 0,
                Err(error) => return Err(error),
            },
            Some(first) => {
                reader.first = Some(first);
                self.write(EVENTS, reader, WriteMode::Append).await?
            }
        };
        let (accepted, rejected) = std::mem::take(&mut *tally.lock().expect("import tally lock poisoned; this is a bug"));
        Ok(ImportReport { accepted, rejected, version })
    }

    /// Replaces the catalog with a new version of `skus` and `nodes`.
    pub async fn import_catalog(&self, skus: &[SkuInfo], nodes: &[NodeInfo]) -> Result<(), BatchError> {
        let sku_batch = skus_to_batch(skus);
        self.write(SKUS, RecordBatchIterator::new([Ok(sku_batch)], sku_schema()), WriteMode::Overwrite).await?;
        let node_batch = nodes_to_batch(nodes);
        self.write(NODES, RecordBatchIterator::new([Ok(node_batch)], node_schema()), WriteMode::Overwrite).await?;
        Ok(())
    }

    pub async fn load_catalog(&self) -> Result<(Vec<SkuInfo>, Vec<NodeInfo>), BatchError> {
        let mut skus = Vec::new();
        for batch in scan(&self.dataset(SKUS, CATALOG_HINT).await?, SKUS).await? {
            skus.extend(skus_from_batch(&batch)?);
        }
        Ok((skus, self.load_nodes().await?))
    }

    /// The catalog's nodes alone (what a serving process keeps).
    pub async fn load_nodes(&self) -> Result<Vec<NodeInfo>, BatchError> {
        let mut nodes = Vec::new();
        for batch in scan(&self.dataset(NODES, CATALOG_HINT).await?, NODES).await? {
            nodes.extend(nodes_from_batch(&batch)?);
        }
        Ok(nodes)
    }

    /// A DataFusion session over the lake's events (and node catalog, when there is one).
    /// Memory is bounded ([`Lake::with_memory_limit`]): sorts, joins and aggregations spill to disk beyond
    /// it. CPU-heavy: callers run it off the request runtime.
    async fn session(&self) -> Result<SessionContext, BatchError> {
        // A fair pool gives every spilling operator its share, so a sort's merge phase still
        // finds the memory it reserved when a join or an aggregation is large too.
        self.session_with(Arc::new(FairSpillPool::new(self.memory_limit))).await
    }

    /// A session as [`Lake::session`]'s, whose queries hold their memory in `pool`.
    async fn session_with(&self, pool: Arc<dyn MemoryPool>) -> Result<SessionContext, BatchError> {
        let events = self.dataset(EVENTS, "import events first (sellable lake import)").await?;
        let runtime = RuntimeEnvBuilder::new().with_memory_pool(pool).build_arc()?;
        // What a sort sets aside for merging its spill files: 64 MiB at the default limit, a
        // thirty-second of smaller limits, so that it fits in an operator's fair share.
        let merge_reservation = (self.memory_limit / 32).min(64 << 20);
        let config = SessionConfig::new().with_target_partitions(2).with_sort_spill_reservation_bytes(merge_reservation);
        let context = match &self.engine {
            Engine::Local => {
                let context = SessionContext::new_with_config_rt(config, runtime);
                context.register_udf(id_hash_udf());
                context
            }
            Engine::Ballista { scheduler } => {
                let context = distributed::session(config, runtime, scheduler.as_deref(), vec![id_hash_udf()]).await?;
                distributed::SharedTables::attach(&context, self)?;
                context
            }
        };
        context.register_table(EVENTS, self.table_of(EVENTS, events))?;
        match self.dataset(NODES, "").await {
            Ok(nodes) => {
                context.register_table(NODES, self.table_of(NODES, nodes))?;
            }
            // no catalog: the batch view can still be computed (nodes only feed features)
            Err(BatchError::Missing(..)) => register_in_memory(&context, NODES, node_schema(), Vec::new())?,
            Err(error) => return Err(error),
        }
        Ok(context)
    }

    /// The dataset `name` as a table of the nightly job's sessions: one that executors can open
    /// when they run on a Ballista cluster.
    fn table_of(&self, name: &str, dataset: Dataset) -> Arc<dyn datafusion::catalog::TableProvider> {
        match self.engine {
            Engine::Local => Arc::new(lance::datafusion::LanceTableProvider::new(Arc::new(dataset), false, false)),
            Engine::Ballista { .. } => Arc::new(distributed::LakeTable::of(&dataset, self.uri(name), self.storage.as_deref())),
        }
    }

    /// A session over the tables analysts query, each the newest version of its dataset (those
    /// the lake has, by table name; the batch view the one its newest deltas pair with), and the
    /// table function `features_at(N)` (the feature store as its version N holds it), its queries
    /// holding their memory in `pool`.
    pub async fn analytics_session(&self, pool: Arc<dyn MemoryPool>) -> Result<(SessionContext, Vec<&'static str>), BatchError> {
        let runtime = RuntimeEnvBuilder::new().with_memory_pool(pool).build_arc()?;
        let context = SessionContext::new_with_config_rt(SessionConfig::new().with_target_partitions(2), runtime);
        let mut tables = Vec::new();
        // the batch view in force: the one its deltas pair with
        let in_force = self.stored_view().await?.map(|(_, view, _)| view);
        for (table, dataset) in ANALYTICS_TABLES {
            let found = match (dataset, &in_force) {
                (BATCH_VIEW, Some(view)) => Ok(view.clone()),
                _ => self.dataset(dataset, "").await,
            };
            match found {
                Ok(found) => {
                    let found = Arc::new(found);
                    let provider = lance::datafusion::LanceTableProvider::new(found.clone(), false, false);
                    if dataset == features::FEATURES {
                        let at = versions::DatasetAt { dataset: found, schema: datafusion::catalog::TableProvider::schema(&provider) };
                        context.register_udtf("features_at", Arc::new(at));
                    }
                    context.register_table(table, Arc::new(provider))?;
                    tables.push(table);
                }
                // not there yet, or its first version being written now
                Err(BatchError::Missing(..) | BatchError::Lance { source: lance::Error::DatasetNotFound { .. }, .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok((context, tables))
    }

    /// Computes the events known at `asof` (deduplicated, not too late) once: every part of the
    /// job reads them as the table `timely` instead of deduplicating the lake again. They are held
    /// in memory up to the scratch limit ([`Lake::with_scratch_limit`]); beyond it they are split
    /// by node into shares of about that size, written to scratch files, so memory stays bounded
    /// and the job computes one share at a time.
    async fn known_events(&self, context: &SessionContext, asof: Millis, config: FoldConfig) -> Result<shares::Known, BatchError> {
        self.register_copied(context).await?;
        let started = std::time::Instant::now();
        self.remove_abandoned_scratch()?;
        let mut stream = context.sql(&timely_events_sql(asof, config)).await?.execute_stream().await?;
        let schema = stream.schema();
        let (mut held, mut bytes, mut rows) = (Vec::new(), 0, 0);
        while bytes <= self.scratch_limit {
            match stream.try_next().await? {
                Some(batch) => {
                    bytes += batch.get_array_memory_size();
                    rows += batch.num_rows();
                    held.push(batch);
                }
                None => {
                    tracing::debug!(seconds = started.elapsed().as_secs_f64(), bytes, "events known at the cutoff held in memory");
                    return Ok(shares::Known::Held { schema, batches: held });
                }
            }
        }
        // Too many to hold: as many shares as the lake's events would fill at the size per event
        // seen so far (an upper bound: not every event is known at the cutoff).
        let lake_rows = self.dataset(EVENTS, "").await?.count_rows(None).await.map_err(self.lance_error(EVENTS))?;
        let estimate = lake_rows as f64 * bytes as f64 / rows.max(1) as f64 / self.scratch_limit.max(1) as f64;
        let count = (estimate.ceil() as usize).clamp(2, shares::MAX_SHARES);
        let mut splitter = shares::Splitter::create(&self.local.join(SCRATCH), schema, count)?;
        for batch in held {
            splitter.write(&batch)?;
        }
        while let Some(batch) = stream.try_next().await? {
            splitter.write(&batch)?;
        }
        let known = splitter.finish()?;
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), shares = count, "events known at the cutoff split into shares");
        Ok(known)
    }

    /// Registers the table `copied` in `context`, once per session: the hashes ([`id_hash_udf`])
    /// of the event ids that occur more than once in the lake. Those are all the deduplication
    /// needs to know, whatever the cutoff (an id with copies known at a cutoff has copies in the
    /// lake). One aggregation over every event id computes it, in a session of its own with a
    /// greedy pool of the same memory limit: it holds nearly all the memory the job uses then,
    /// and a fair pool would give it a share only, and make it spill.
    async fn register_copied(&self, context: &SessionContext) -> Result<(), BatchError> {
        if context.table_exist("copied")? {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let counting = self.session_with(Arc::new(GreedyMemoryPool::new(self.memory_limit))).await?;
        let sql = format!("SELECT id_hash(event_id) AS copied_hash FROM {EVENTS} GROUP BY id_hash(event_id) HAVING COUNT(*) > 1");
        let frame = counting.sql(&sql).await?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let copied = frame.collect().await?;
        let rows: usize = copied.iter().map(RecordBatch::num_rows).sum();
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), ids = rows, "event ids with copies");
        register_rows(context, "copied", schema, copied).await
    }

    /// Removes what killed runs left in the scratch space (a run removes its own scratch files
    /// when it is done; runs in progress keep theirs: see [`shares`]).
    fn remove_abandoned_scratch(&self) -> Result<(), BatchError> {
        shares::remove_abandoned(&self.local.join(SCRATCH))?;
        // where versions before the shares kept the events
        let old = self.local.join("scratch_timely.lance");
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|source| BatchError::Input(InputError::Io { path: old.display().to_string(), source }))?;
        }
        Ok(())
    }

    /// The version of the `events` dataset (0: none yet): the lineage of what is computed.
    pub async fn events_version(&self) -> Result<u64, BatchError> {
        match self.dataset(EVENTS, "").await {
            Ok(dataset) => Ok(dataset.version_id()),
            Err(BatchError::Missing(..)) => Ok(0),
            Err(error) => Err(error),
        }
    }

    /// Every dataset of the lake: versions, rows, size on disk; for events, the time range.
    pub async fn info(&self) -> Result<Vec<DatasetInfo>, BatchError> {
        let mut infos = Vec::new();
        for name in [EVENTS, SKUS, NODES, BATCH_VIEW, BATCH_DELTAS, features::FEATURES, trainset::TRAINSET, decisions::DECISIONS] {
            let dataset = match self.dataset(name, "").await {
                Ok(dataset) => dataset,
                Err(BatchError::Missing(..)) => continue,
                Err(error) => return Err(error),
            };
            let lance_error = self.lance_error(name);
            let versions = dataset.versions().await.map_err(&lance_error)?.len() as u64;
            let rows = dataset.count_rows(None).await.map_err(&lance_error)? as u64;
            let range = if name == EVENTS && rows > 0 {
                let context = self.session().await?;
                let sql = format!("SELECT MIN(CAST(ts AS BIGINT)), MAX(CAST(COALESCE(arrived, ts) AS BIGINT)) FROM {EVENTS}");
                let batches = context.sql(&sql).await?.collect().await?;
                let batch = batches.first().ok_or_else(|| BatchError::Corrupt { dataset: EVENTS.into(), message: "no time range".into() })?;
                let value = |index: usize| batch.column(index).as_any().downcast_ref::<Int64Array>().map(|column| column.value(0));
                value(0).zip(value(1))
            } else {
                None
            };
            infos.push(DatasetInfo { name, version: dataset.version_id(), versions, rows, bytes: self.stored_bytes(name).await?, range });
        }
        Ok(infos)
    }

    /// Events that arrived after `cutoff`, in arrival order: what the speed layer folds.
    pub async fn events_after(&self, cutoff: Millis) -> Result<Vec<Result<Event, DecodeError>>, BatchError> {
        let context = self.session().await?;
        let sql = format!(
            "SELECT * FROM {EVENTS} WHERE CAST(COALESCE(arrived, ts) AS BIGINT) > {cutoff} \
             ORDER BY COALESCE(arrived, ts), event_id"
        );
        let batches = context.sql(&sql).await?.collect().await?;
        let mut events = Vec::new();
        for batch in batches {
            events.extend(events_from_batch(&batch, 0)?);
        }
        Ok(events)
    }

    /// `(sku, event_id)` of the events that arrived in `(from, to]`: what the speed view must
    /// recognise as already folded when it starts at cutoff `to`.
    pub async fn event_ids_arrived(&self, from: Millis, to: Millis) -> Result<Vec<(String, String)>, BatchError> {
        let context = self.session().await?;
        let sql = format!(
            "SELECT sku, event_id FROM {EVENTS} \
             WHERE CAST(COALESCE(arrived, ts) AS BIGINT) > {from} AND CAST(COALESCE(arrived, ts) AS BIGINT) <= {to}"
        );
        let mut ids = Vec::new();
        for batch in context.sql(&sql).await?.collect().await? {
            let sku = string_column(&batch, "sku", EVENTS)?;
            let event_id = string_column(&batch, "event_id", EVENTS)?;
            ids.extend((0..batch.num_rows()).map(|row| (sku.value(row).to_string(), event_id.value(row).to_string())));
        }
        Ok(ids)
    }

    /// The latest event arrival in the lake, if any: a natural default cutoff.
    pub async fn last_arrival(&self) -> Result<Option<Millis>, BatchError> {
        let context = self.session().await?;
        let batches = context
            .sql(&format!("SELECT MAX(CAST(COALESCE(arrived, ts) AS BIGINT)) AS last FROM {EVENTS}"))
            .await?
            .collect()
            .await?;
        Ok(batches
            .first()
            .and_then(|batch| batch.column(0).as_any().downcast_ref::<Int64Array>())
            .filter(|column| !column.is_empty() && !column.is_null(0))
            .map(|column| column.value(0)))
    }

    /// Computes the batch view as of `asof` with DataFusion (the snapshot columns of the feature
    /// SQL) and writes it as new versions of `batch_view` and `batch_deltas`.
    pub async fn compute_batch_view(&self, asof: Millis, config: FoldConfig) -> Result<BatchSummary, BatchError> {
        let events_version = self.events_version().await?;
        let computed = self.compute(asof, config, &indicatif::ProgressBar::hidden()).await?;
        self.write_batch_view(&computed, asof, events_version, config).await
    }

    /// The batch view's states as of `asof`, from the lake as it is now: where a training set's
    /// replay starts. The stored view when it was computed for this cutoff from the same events
    /// with the same lateness ([`ViewLineage`]; the second value is then true), else computed and
    /// kept in memory (nothing is written).
    pub(crate) async fn batch_states_at(
        &self,
        asof: Millis,
        config: FoldConfig,
        bar: &indicatif::ProgressBar,
    ) -> Result<(BTreeMap<SkuNode, NodeState>, bool), BatchError> {
        if let Some(states) = self.stored_batch_states(asof, config).await? {
            return Ok((states, true));
        }
        let computed = self.compute(asof, config, bar).await?;
        let view: Vec<RecordBatch> = computed.view.batches()?.collect::<Result<_, _>>()?;
        let deltas: Vec<RecordBatch> = computed.deltas.batches()?.collect::<Result<_, _>>()?;
        Ok((view_states(&view, &deltas)?, false))
    }

    /// The stored batch view's states, if its lineage says it is the view as of `asof` of the
    /// lake's events as they are now, with `config`'s lateness.
    async fn stored_batch_states(&self, asof: Millis, config: FoldConfig) -> Result<Option<BTreeMap<SkuNode, NodeState>>, BatchError> {
        let Some((recorded, view, deltas)) = self.stored_view().await? else {
            return Ok(None);
        };
        if (recorded.asof, recorded.events_version, recorded.lateness_ms) != (asof, self.events_version().await?, config.lateness_ms) {
            return Ok(None);
        }
        Ok(Some(view_states(&scan(&view, BATCH_VIEW).await?, &scan(&deltas, BATCH_DELTAS).await?)?))
    }

    /// The feature SQL's rows and deltas as of `asof`, one step of `bar` per share.
    async fn compute(&self, asof: Millis, config: FoldConfig, bar: &indicatif::ProgressBar) -> Result<features::Computed, BatchError> {
        let context = self.session().await?;
        let known = self.known_events(&context, asof, config).await?;
        bar.set_length(known.shares().len() as u64);
        let computed = self.features_of(&context, &known, asof, bar).await;
        distributed::release(&context).await;
        computed
    }

    /// The nightly job: the batch view and the features as of `asof`, from one pass over the
    /// lake's events (they are deduplicated and materialised once for both).
    pub async fn nightly(&self, asof: Millis, config: FoldConfig, progress: &Progress) -> Result<(BatchSummary, features::FeaturesSummary), BatchError> {
        self.dataset(NODES, features::NEEDS_CATALOG).await?;
        let events_version = self.events_version().await?;
        let context = self.session().await?;
        let (view, features, _) = self.nightly_in(&context, events_version, asof, config, progress).await?;
        Ok((view, features))
    }

    /// [`Lake::nightly`] in `context`, whose events are `events_version` or newer (read before
    /// the context was made); also gives the events known at `asof` it computed from.
    async fn nightly_in(
        &self,
        context: &SessionContext,
        events_version: u64,
        asof: Millis,
        config: FoldConfig,
        progress: &Progress,
    ) -> Result<(BatchSummary, features::FeaturesSummary, shares::Known), BatchError> {
        let bar = progress.bar("nightly", 3);
        bar.set_message("events known at the cutoff");
        let known = self.known_events(context, asof, config).await?;
        bar.inc(1);
        let shares = known.shares().len() as u64;
        bar.set_length(2 + shares);
        let started = std::time::Instant::now();
        let computed = self.features_of(context, &known, asof, &bar).await;
        distributed::release(context).await;
        let computed = computed?;
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), shares, "features and snapshot computed");
        bar.set_message("batch view and features written");
        let started = std::time::Instant::now();
        let view = self.write_batch_view(&computed, asof, events_version, config).await?;
        let features = self.write_features(&[&computed.features], &[asof]).await?;
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "batch view and features written");
        bar.inc(1);
        bar.finish();
        Ok((view, features, known))
    }

    /// Writes the batch view: the snapshot columns of the feature SQL's rows, then the on-hand
    /// deltas after each anchor with its lineage in their commit (computed from `events_version`
    /// of the events, read before the computation started, with `config`'s lateness).
    /// Each batch is read as the writer takes it.
    async fn write_batch_view(&self, computed: &features::Computed, asof: Millis, events_version: u64, config: FoldConfig) -> Result<BatchSummary, BatchError> {
        let view = computed.view.batches()?.map(|batch| batch.map_err(as_arrow_error));
        let version = self.write(BATCH_VIEW, RecordBatchIterator::new(view, view_schema()), WriteMode::Overwrite).await?;
        let lineage = ViewLineage { asof, events_version, lateness_ms: config.lateness_ms, view_version: version };
        let deltas = computed.deltas.batches()?.map(|batch| batch.map_err(as_arrow_error));
        let deltas = RecordBatchIterator::new(deltas, computed.deltas.schema().unwrap_or_else(deltas_schema));
        let deltas_version = self.write_with(BATCH_DELTAS, deltas, WriteMode::Overwrite, Some(lineage.to_properties())).await?;
        let (sku_nodes, deltas) = (computed.view.count() as u64, computed.deltas.count() as u64);
        Ok(BatchSummary { asof, sku_nodes, deltas, version, deltas_version, shares: computed.shares })
    }

    /// The version of `events` the stored batch view was computed from, if its lineage says
    /// (a speed view that completes it must start from that version: `sellable-lifecycle`).
    pub async fn batch_view_events_version(&self) -> Result<Option<u64>, BatchError> {
        Ok(self.stored_view().await?.map(|(lineage, ..)| lineage.events_version))
    }

    /// The cutoff of the stored batch view, from its lineage (a cheap check for a new one).
    pub async fn batch_view_asof(&self) -> Result<Option<Millis>, BatchError> {
        Ok(self.stored_view().await?.map(|(lineage, ..)| lineage.asof))
    }

    /// The stored batch view and deltas with the lineage committed with the deltas, if the
    /// newest deltas have one: the view is the version it names (the newest unless a run stopped
    /// between its two writes, leaving a view whose deltas were never written).
    async fn stored_view(&self) -> Result<Option<(ViewLineage, Dataset, Dataset)>, BatchError> {
        let (Some(view), Some(deltas)) = (self.existing(BATCH_VIEW).await?, self.existing(BATCH_DELTAS).await?) else {
            return Ok(None);
        };
        let transaction = deltas.read_transaction_by_version(deltas.version_id()).await.map_err(self.lance_error(BATCH_DELTAS))?;
        let lineage = transaction.and_then(|t| t.transaction_properties).and_then(|properties| ViewLineage::parse(&properties));
        let Some(lineage) = lineage else { return Ok(None) };
        // a run that stopped between its two writes left a newer view: its deltas' is the pair
        let view = if view.version_id() == lineage.view_version {
            view
        } else {
            view.checkout_version(lineage.view_version).await.map_err(self.lance_error(BATCH_VIEW))?
        };
        Ok(Some((lineage, view, deltas)))
    }

    /// The stored view and deltas ([`Lake::stored_view`]), or why there are none.
    async fn stored_view_or_missing(&self) -> Result<(ViewLineage, Dataset, Dataset), BatchError> {
        self.stored_view().await?.ok_or_else(|| BatchError::Missing(self.location.clone(), BATCH_VIEW, "compute one first (sellable batch)"))
    }

    /// Loads the latest batch view into memory (serving streams it instead: [`Lake::load_published`]).
    pub async fn load_batch_view(&self) -> Result<BatchView, BatchError> {
        let (lineage, view, deltas) = self.stored_view_or_missing().await?;
        let (version, asof) = (view.version_id(), lineage.asof);
        let states = view_states(&scan(&view, BATCH_VIEW).await?, &scan(&deltas, BATCH_DELTAS).await?)?;
        // the feature store's features of the same cutoff, if it has them
        let (features, features_version) = match self.load_features(Some(asof)).await {
            Ok(features) => (features.rows, format!(", features v{}", features.version)),
            Err(BatchError::Missing(..)) | Err(BatchError::Corrupt { .. }) => (Default::default(), String::new()),
            Err(error) => return Err(error),
        };
        let version = format!("batch_view v{version} asof {}{features_version}", sellable_core::event::format_millis(asof));
        Ok(BatchView { version, asof, states, features })
    }
}

const CATALOG_HINT: &str = "import a catalog first (sellable import)";

/// One dataset of the lake, for `sellable lake info`.
#[derive(Debug, Clone)]
pub struct DatasetInfo {
    pub name: &'static str,
    pub version: u64,
    pub versions: u64,
    pub rows: u64,
    pub bytes: u64,
    /// For events: the earliest event time and the latest arrival.
    pub range: Option<(Millis, Millis)>,
}

impl Lake {
    /// The bytes the dataset `name` takes in its store, every version kept.
    async fn stored_bytes(&self, name: &str) -> Result<u64, BatchError> {
        let registry = Arc::new(lance::io::ObjectStoreRegistry::default());
        let params = self.store_params().unwrap_or_default();
        let (store, path) = lance::io::ObjectStore::from_uri_and_params(registry, &self.uri(name), &params).await.map_err(self.lance_error(name))?;
        let mut files = store.read_dir_all(&path, None);
        let mut bytes = 0;
        while let Some(file) = files.try_next().await.map_err(self.lance_error(name))? {
            bytes += file.size;
        }
        Ok(bytes)
    }
}

/// How much memory one DataFusion query may hold before spilling, unless the lake is opened
/// with another limit: 2 GiB.
pub const DEFAULT_MEMORY_LIMIT: usize = 2048 << 20;

/// The smallest memory limit (MiB) the jobs are run with: below it, the operators that cannot
/// spill (hash tables of joins and of the per-sku×node aggregations) leave a sort too little to
/// merge its spill files with.
pub const MIN_MEMORY_MB: u64 = 64;

/// Progress bars, one per stage, on stderr (hidden when stderr is not a terminal, and in tests).
#[derive(Clone)]
pub struct Progress {
    bars: Option<indicatif::MultiProgress>,
}

impl Progress {
    pub fn stderr() -> Progress {
        Progress { bars: Some(indicatif::MultiProgress::new()) }
    }

    pub fn hidden() -> Progress {
        Progress { bars: None }
    }

    /// A bar for one stage of `len` steps.
    pub fn bar(&self, stage: &str, len: u64) -> indicatif::ProgressBar {
        let Some(bars) = &self.bars else { return indicatif::ProgressBar::hidden() };
        let style = indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> ");
        bars.add(indicatif::ProgressBar::new(len).with_style(style).with_prefix(stage.to_string()))
    }
}

async fn scan(dataset: &Dataset, name: &str) -> Result<Vec<RecordBatch>, BatchError> {
    let lance_error = |source| BatchError::Lance { dataset: name.to_string(), source };
    dataset.scan().try_into_stream().await.map_err(lance_error)?.try_collect().await.map_err(lance_error)
}

/// `CASE kind WHEN 'receipt' THEN 1 ... ELSE 0 END * qty`, from `core`'s [`effect`].
fn effect_sql(part: fn(&sellable_core::fold::Effect) -> i64) -> String {
    let cases: String = EventKind::ALL
        .into_iter()
        .map(|kind| (kind, part(&effect(kind, 1))))
        .filter(|(_, coefficient)| *coefficient != 0)
        .map(|(kind, coefficient)| format!(" WHEN '{kind}' THEN {coefficient}"))
        .collect();
    format!("(CASE kind{cases} ELSE 0 END) * qty")
}

/// `id_hash(event_id)`: a 64-bit hash of an event id, so that looking for ids with copies groups
/// integers instead of strings. Equal ids hash equal; two ids that collide only send their events
/// through the exact ranking by id, so the result does not depend on the hash.
fn id_hash_udf() -> datafusion::logical_expr::ScalarUDF {
    use datafusion::logical_expr::{ColumnarValue, Volatility};
    datafusion::logical_expr::create_udf(
        "id_hash",
        vec![DataType::Utf8],
        DataType::UInt64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let ids = arrays.first().and_then(|array| array.as_any().downcast_ref::<StringArray>()).ok_or_else(|| {
                datafusion::error::DataFusionError::Internal("id_hash takes one string column".into())
            })?;
            let hashes: arrow_array::UInt64Array = ids.iter().map(|id| id.map(fixed_hash)).collect();
            Ok(ColumnarValue::Array(Arc::new(hashes)))
        }),
    )
}

/// A 64-bit hash of `text` that is the same in every run (of one build): event ids for
/// deduplication, nodes for their share.
fn fixed_hash(text: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(text)
}

/// The events known at `asof` that were not too late, deduplicated by `event_id` (the first
/// arrival wins), with times as integer milliseconds. Reads the table `copied`
/// ([`Lake::register_copied`]).
fn timely_events_sql(asof: Millis, config: FoldConfig) -> String {
    // One copy of each event_id: the first to arrive. Copies are rare, so instead of sorting every
    // event by id, the events without copies pass through a join that holds only the hashes of
    // the ids with copies (`copied`: few, so the joins know it is small and hold it whole), and
    // only the events with such a hash are ranked, by their id.
    with_effects(&first_copies_sql(&known_events_sql(None, asof, config), "SELECT copied_hash FROM copied"))
}

/// One copy of each event_id of the rows `known` (of [`known_events_sql`]), the first to arrive,
/// given the hashes of the ids with copies (`copies`, a query of one column `copied_hash`).
fn first_copies_sql(known: &str, copies: &str) -> String {
    format!(
        "WITH known AS ({known}),
         copies AS ({copies}),
         first_copies AS (
           SELECT event_id, ts, sku, node, kind, qty, arrival FROM (
             SELECT k.*, row_number() OVER (PARTITION BY k.event_id ORDER BY k.arrival, k.ts) AS copy
             FROM copies c JOIN known k ON k.id_hash = c.copied_hash
           ) AS ranked WHERE copy = 1
         ),
         single AS (
           SELECT k.event_id, k.ts, k.sku, k.node, k.kind, k.qty, k.arrival
           FROM copies c RIGHT JOIN known k ON k.id_hash = c.copied_hash WHERE c.copied_hash IS NULL
         )
         SELECT * FROM single UNION ALL SELECT * FROM first_copies"
    )
}

/// The rows of `events` that arrived after `after` (if given) and by `asof`, not too late, with
/// times as integer milliseconds and the hash of their id (copies included).
fn known_events_sql(after: Option<Millis>, asof: Millis, config: FoldConfig) -> String {
    let after = after.map(|after| format!(" AND arrival > {after}")).unwrap_or_default();
    format!(
        "SELECT * FROM (SELECT event_id, id_hash(event_id) AS id_hash, CAST(ts AS BIGINT) AS ts, sku, node,
                               kind, qty, CAST(COALESCE(arrived, ts) AS BIGINT) AS arrival
                        FROM {EVENTS}) AS events
         WHERE arrival <= {asof} AND arrival - ts <= {lateness}{after}",
        lateness = config.lateness_ms,
    )
}

/// The events of the table `day_known` (rows of [`known_events_sql`]: those that arrived since
/// the last night), one copy of each event_id (the first to arrive), none of those of the table
/// `tail` (a copy of an event known the night before carries its time, after the tail's start:
/// `incremental.sql`), with their effects.
fn fresh_events_sql() -> String {
    let copies = "SELECT id_hash AS copied_hash FROM day_known GROUP BY id_hash HAVING COUNT(*) > 1";
    with_effects(&format!(
        "SELECT * FROM ({first}) AS day WHERE NOT EXISTS (SELECT 1 FROM tail t WHERE t.event_id = day.event_id)",
        first = first_copies_sql("SELECT * FROM day_known", copies)
    ))
}

/// The events of `source` (event_id, ts, sku, node, kind, qty, arrival) with whether they are
/// readings and their effects on on-hand, reserved and held: the columns of `timely`.
fn with_effects(source: &str) -> String {
    let absolute: Vec<String> =
        EventKind::ALL.into_iter().filter(|kind| kind.is_absolute()).map(|kind| format!("'{kind}'")).collect();
    format!(
        "SELECT event_id, ts, sku, node, kind, qty, arrival, kind IN ({absolute}) AS absolute,
                {on_hand} AS d_on_hand, {reserved} AS d_reserved, {held} AS d_held
         FROM ({source}) AS timely",
        absolute = absolute.join(", "),
        on_hand = effect_sql(|e| e.on_hand),
        reserved = effect_sql(|e| e.reserved),
        held = effect_sql(|e| e.held),
    )
}

/// The statements of a SQL script: each ends with a line ending in `;` (comments aside).
fn statements(sql: &str) -> Vec<String> {
    let mut statements = vec![String::new()];
    for line in sql.lines() {
        let current = statements.last_mut().expect("never empty");
        let code = !line.trim_start().starts_with("--");
        match line.trim_end().strip_suffix(';') {
            Some(end) if code => {
                current.push_str(end);
                statements.push(String::new());
            }
            _ => {
                current.push_str(line);
                current.push('\n');
            }
        }
    }
    statements.retain(|statement| statement.lines().any(|line| !line.trim().is_empty() && !line.trim_start().starts_with("--")));
    statements
}

/// Registers `batches` as the table `name` of a nightly job's session, replacing any earlier
/// one: in memory, or, when its queries run on a cluster, shared with the executors.
async fn register_rows(context: &SessionContext, name: &str, schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<(), BatchError> {
    match distributed::SharedTables::of(context) {
        Some(shared) => shared.register(context, name, schema, batches).await,
        None => register_in_memory(context, name, schema, batches),
    }
}

/// Runs one statement of a script. On a cluster, a `CREATE OR REPLACE TABLE name AS query` streams
/// the query's rows into a shared table (DataFusion would hold them in the client's memory and
/// send them with every plan that reads them).
async fn execute_statement(context: &SessionContext, statement: &str) -> Result<(), BatchError> {
    let created = features::created_table(statement).and_then(|name| {
        let head = format!("TABLE {name} AS");
        Some((name, &statement[statement.find(&head)? + head.len()..]))
    });
    match (created, distributed::SharedTables::of(context)) {
        (Some((name, query)), Some(shared)) => shared.register_stream(context, name, context.sql(query).await?.execute_stream().await?).await,
        _ => {
            context.sql(statement).await?.collect().await?;
            Ok(())
        }
    }
}

/// Registers `batches` as the in-memory table `name`, replacing any earlier one.
fn register_in_memory(context: &SessionContext, name: &str, schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<(), BatchError> {
    context.deregister_table(name)?;
    context.register_table(name, Arc::new(datafusion::datasource::MemTable::try_new(schema, vec![batches])?))?;
    Ok(())
}

/// The batch view's columns (of [`view_schema`]) of one batch of the feature SQL's rows.
fn view_batch(rows: &RecordBatch, asof: Millis) -> Result<RecordBatch, BatchError> {
    let schema = view_schema();
    let columns = schema
        .fields()
        .iter()
        .map(|field| match field.name().as_str() {
            "asof" => Ok(Arc::new(Int64Array::from(vec![asof; rows.num_rows()])) as ArrayRef),
            name @ ("sku" | "node") => arrow_cast::cast(column(rows, name, BATCH_VIEW)?, field.data_type()).map_err(view_error),
            name => arrow_cast::cast(column(rows, &format!("view_{name}"), BATCH_VIEW)?, field.data_type()).map_err(view_error),
        })
        .collect::<Result<_, _>>()?;
    RecordBatch::try_new(schema, columns).map_err(view_error)
}

/// `batches` as a stream of DataFusion's, read as it is polled.
fn batch_stream(schema: SchemaRef, batches: impl Iterator<Item = Result<RecordBatch, BatchError>> + Send + 'static) -> datafusion::execution::SendableRecordBatchStream {
    let batches = batches.map(|batch| batch.map_err(|error| datafusion::error::DataFusionError::External(Box::new(error))));
    Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, futures::stream::iter(batches)))
}

/// An error of the rows read back for a writer, as its reader gives it.
fn as_arrow_error(error: BatchError) -> ArrowError {
    ArrowError::ExternalError(Box::new(error))
}

fn view_error(error: ArrowError) -> BatchError {
    BatchError::Corrupt { dataset: BATCH_VIEW.into(), message: error.to_string() }
}

fn view_schema() -> SchemaRef {
    let int = |name: &str, nullable| Field::new(name, DataType::Int64, nullable);
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("sku", false),
        text("node", false),
        int("reserved", true),
        int("held", true),
        int("last_ts", true),
        int("last_arrived", true),
        int("anchor_ts", true),
        text("anchor_id", true),
        int("anchor_qty", true),
        text("anchor_kind", true),
        int("on_hand", true),
        int("asof", false),
    ]))
}

fn deltas_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sku", DataType::Utf8, false),
        Field::new("node", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("delta", DataType::Int64, false),
    ]))
}

/// `batch`'s columns of `schema`'s names, cast to its types (a query may give other types: string
/// views, other integer widths), as rows of `dataset`.
fn conformed(batch: &RecordBatch, schema: &SchemaRef, dataset: &str) -> Result<RecordBatch, BatchError> {
    let corrupt = |error: ArrowError| BatchError::Corrupt { dataset: dataset.into(), message: error.to_string() };
    let columns = schema
        .fields()
        .iter()
        .map(|field| arrow_cast::cast(column(batch, field.name(), dataset)?, field.data_type()).map_err(corrupt))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(corrupt)
}

fn column<'a>(batch: &'a RecordBatch, name: &str, dataset: &str) -> Result<&'a ArrayRef, BatchError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| BatchError::Corrupt { dataset: dataset.into(), message: format!("column {name} missing") })
}

fn string_column(batch: &RecordBatch, name: &str, dataset: &str) -> Result<StringArray, BatchError> {
    let array = arrow_cast::cast(column(batch, name, dataset)?, &DataType::Utf8).map_err(|e| BatchError::Corrupt {
        dataset: dataset.into(),
        message: format!("column {name}: {e}"),
    })?;
    Ok(array.as_any().downcast_ref::<StringArray>().expect("cast to Utf8").clone())
}

fn int_column(batch: &RecordBatch, name: &str, dataset: &str) -> Result<Int64Array, BatchError> {
    let array = arrow_cast::cast(column(batch, name, dataset)?, &DataType::Int64).map_err(|e| BatchError::Corrupt {
        dataset: dataset.into(),
        message: format!("column {name}: {e}"),
    })?;
    Ok(array.as_any().downcast_ref::<Int64Array>().expect("cast to Int64").clone())
}

/// A batch view's states from its rows (`batch_view`'s columns) and on-hand deltas
/// (`batch_deltas`'s).
fn view_states(view: &[RecordBatch], deltas: &[RecordBatch]) -> Result<BTreeMap<SkuNode, NodeState>, BatchError> {
    let mut states: BTreeMap<SkuNode, NodeState> = BTreeMap::new();
    for batch in view {
        let rows = ViewColumns::of(batch)?;
        for row in 0..batch.num_rows() {
            states.insert((rows.sku.value(row).to_string(), rows.node.value(row).to_string()), rows.state(row)?);
        }
    }
    for batch in deltas {
        let corrupt = |message: &str| BatchError::Corrupt { dataset: BATCH_DELTAS.into(), message: message.into() };
        let sku = string_column(batch, "sku", BATCH_DELTAS)?;
        let node = string_column(batch, "node", BATCH_DELTAS)?;
        let event_id = string_column(batch, "event_id", BATCH_DELTAS)?;
        let ts = int_column(batch, "ts", BATCH_DELTAS)?;
        let delta = int_column(batch, "delta", BATCH_DELTAS)?;
        for row in 0..batch.num_rows() {
            let key = (sku.value(row).to_string(), node.value(row).to_string());
            let state = states.get_mut(&key).ok_or_else(|| corrupt("delta for a sku×node missing from batch_view"))?;
            state.deltas.insert(EventKey { ts: ts.value(row), event_id: event_id.value(row).to_string() }, delta.value(row));
        }
    }
    Ok(states)
}

struct ViewColumns {
    sku: StringArray,
    node: StringArray,
    reserved: Int64Array,
    held: Int64Array,
    last_ts: Int64Array,
    last_arrived: Int64Array,
    anchor_ts: Int64Array,
    anchor_id: StringArray,
    anchor_qty: Int64Array,
    anchor_kind: StringArray,
}

impl ViewColumns {
    fn of(batch: &RecordBatch) -> Result<ViewColumns, BatchError> {
        let text = |name| string_column(batch, name, BATCH_VIEW);
        let int = |name| int_column(batch, name, BATCH_VIEW);
        Ok(ViewColumns {
            sku: text("sku")?,
            node: text("node")?,
            reserved: int("reserved")?,
            held: int("held")?,
            last_ts: int("last_ts")?,
            last_arrived: int("last_arrived")?,
            anchor_ts: int("anchor_ts")?,
            anchor_id: text("anchor_id")?,
            anchor_qty: int("anchor_qty")?,
            anchor_kind: text("anchor_kind")?,
        })
    }

    fn state(&self, row: usize) -> Result<NodeState, BatchError> {
        let optional = |array: &Int64Array| (!array.is_null(row)).then(|| array.value(row));
        let anchor = match optional(&self.anchor_ts) {
            None => None,
            Some(ts) => {
                let kind_text = self.anchor_kind.value(row);
                let kind = EventKind::parse(kind_text).ok_or_else(|| BatchError::Corrupt {
                    dataset: BATCH_VIEW.into(),
                    message: format!("row {row}: anchor kind '{kind_text}'"),
                })?;
                Some(Anchor {
                    key: EventKey { ts, event_id: self.anchor_id.value(row).to_string() },
                    qty: self.anchor_qty.value(row),
                    kind,
                })
            }
        };
        Ok(NodeState {
            anchor,
            deltas: BTreeMap::new(),
            reserved: optional(&self.reserved).unwrap_or(0),
            held: optional(&self.held).unwrap_or(0),
            last_event_ts: optional(&self.last_ts),
            last_arrived: optional(&self.last_arrived),
            // recent demand is the speed view's: it restarts at each cutoff
            demand: BTreeMap::new(),
        })
    }
}

/// Turns decoded events into Arrow batches for Lance, keeping count of what was accepted and
/// what was rejected. A fatal input error fails the whole write.
struct EventBatches {
    events: Box<dyn Iterator<Item = Result<Event, DecodeError>> + Send>,
    tally: Arc<Mutex<(u64, Vec<DecodeError>)>>,
    /// A batch read ahead (to see whether there is anything to write at all).
    first: Option<Result<RecordBatch, ArrowError>>,
}

impl Iterator for EventBatches {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        let mut tally = self.tally.lock().expect("import tally lock poisoned; this is a bug");
        for decoded in self.events.by_ref() {
            match decoded {
                Ok(event) => batch.push(event),
                // A broken file fails the whole import: Lance then commits no version.
                Err(error) if error.unreadable => return Some(Err(ArrowError::ExternalError(Box::new(InputError::Unreadable(error))))),
                Err(error) => tally.1.push(error),
            }
            if batch.len() == WRITE_BATCH {
                break;
            }
        }
        if batch.is_empty() {
            return None;
        }
        tally.0 += batch.len() as u64;
        Some(Ok(events_to_batch(&batch)))
    }
}

impl RecordBatchReader for EventBatches {
    fn schema(&self) -> SchemaRef {
        event_schema()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_script_splits_at_lines_ending_in_a_semicolon_and_not_in_comments() {
        let script = "-- a comment; not an end\nCREATE TABLE a AS\n  SELECT 1;\n\n-- part 2\nSELECT ';' FROM a\n";
        let statements = super::statements(script);
        assert_eq!(statements.len(), 2, "{statements:?}");
        assert!(statements[0].contains("-- a comment; not an end") && statements[0].trim_end().ends_with("SELECT 1"));
        assert!(statements[1].contains("SELECT ';' FROM a"));
        // comments alone after the last statement are no statement
        assert_eq!(super::statements("SELECT 1;\n-- the end\n").len(), 1);
    }
}
