//! The nightly job on a Ballista cluster (`--engine ballista`): the same SQL, planned by the
//! cluster's scheduler and run by its executors. What a plan reads travels as where to read it:
//!
//! - the lake's datasets (`events`, `nodes`) as [`LakeTable`]s: their URI, version and storage
//!   options only. Each executor opens the dataset and reads the fragments of its partitions
//!   ([`LakeScanExec`]), so the events are read where the work is done, never by the client;
//! - the job's own tables (the events known at the cutoff of one share, the tables the feature
//!   SQL creates), which the local engine holds in memory, are written as Lance datasets into a
//!   scratch directory of the lake ([`SharedTables`]) and read like the lake's own; an empty one
//!   stays in memory and travels inside the plan as Arrow IPC;
//! - the job's function `id_hash`, by name.
//!
//! [`LakeLogicalCodec`] and [`LakePhysicalCodec`] say how, and hand every other node to
//! Ballista's own codecs. Executors must run with them: the standalone cluster
//! ([`Engine::Ballista`] without a scheduler) and `sellable ballista executor` do.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use ballista::extension::{SessionConfigExt, SessionContextExt};
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::common::TableReference;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SessionStateBuilder, TaskContext};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{Expr, Extension, ScalarUDF, TableType};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use futures::{StreamExt, TryStreamExt};
use lance::dataset::builder::DatasetBuilder;
use lance::dataset::Dataset;

/// Where the nightly job's queries run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Engine {
    /// DataFusion in this process.
    #[default]
    Local,
    /// A Ballista cluster: the scheduler at this URL (`df://host:port`), or, without one, a
    /// standalone scheduler and executor started in this process for each session.
    Ballista { scheduler: Option<String> },
}

/// The limit of a gRPC message between the client, the scheduler and the executors (Ballista's
/// default is 16 MiB): a plan of many stages over many fragments may be larger.
pub const MAX_PLAN_BYTES: usize = 1 << 30;

/// A session whose queries run on the Ballista cluster of `scheduler` (a standalone one when
/// `None`), with `config` and `runtime` (its memory pool: the standalone executor's too), the
/// lake's codecs and its functions.
pub(crate) async fn session(config: SessionConfig, runtime: Arc<RuntimeEnv>, scheduler: Option<&str>, functions: Vec<ScalarUDF>) -> Result<SessionContext> {
    let config = config
        .upgrade_for_ballista()
        .with_ballista_logical_extension_codec(Arc::new(LakeLogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(LakePhysicalCodec::default()))
        .with_ballista_grpc_client_max_message_size(MAX_PLAN_BYTES);
    // the standalone scheduler and executor find the functions in this state; the client's
    // (Ballista's upgrade of it) has Ballista's own, and gets them after
    let mut state = SessionStateBuilder::new().with_default_features().with_config(config).with_runtime_env(runtime).build();
    for function in &functions {
        state.register_udf(Arc::new(function.clone()))?;
    }
    let context = match scheduler {
        Some(url) => SessionContext::remote_with_state(url, state).await?,
        None => SessionContext::standalone_with_state(state).await?,
    };
    for function in functions {
        context.register_udf(function);
    }
    Ok(context)
}

/// The functions an executor of the job resolves by name: DataFusion's (nested ones included)
/// and the job's own.
pub fn executor_functions() -> Result<Arc<ballista_core::registry::BallistaFunctionRegistry>> {
    let mut state = SessionStateBuilder::new().with_default_features().build();
    state.register_udf(Arc::new(crate::id_hash_udf()))?;
    Ok(Arc::new(ballista_core::registry::BallistaFunctionRegistry::from(&state)))
}

/// The tables a job's session on a cluster shares with the executors: what it would hold in
/// memory (the events known at the cutoff of a share, the tables `features.sql` creates) is
/// written as Lance datasets into a scratch directory of the lake, which every executor reads
/// like the lake's own datasets. A local lake's directory is a run's locked scratch directory
/// ([`crate::shares::ScratchDir`]: removed with the session, or by the next run if this one is
/// killed); an object store's tables are removed at the end of the job ([`release`]), or in the
/// background when the session is dropped before.
pub(crate) struct SharedTables {
    /// The directory's path or URI.
    base: String,
    options: Option<Arc<std::collections::HashMap<String, String>>>,
    store: Option<lance::io::ObjectStoreParams>,
    written: std::sync::Mutex<Vec<Dataset>>,
    _local: Option<crate::shares::ScratchDir>,
}

impl SharedTables {
    /// Attaches a scratch directory of `lake` to `context` (whose queries run on a cluster).
    pub(crate) fn attach(context: &SessionContext, lake: &crate::Lake) -> std::result::Result<(), crate::BatchError> {
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let (base, local) = if crate::Lake::is_remote(lake.location()) {
            let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|since| since.as_nanos()).unwrap_or_default();
            (format!("{}/{}/shared-{}-{nanos}-{run}", lake.location(), crate::SCRATCH, std::process::id()), None)
        } else {
            let dir = crate::shares::ScratchDir::claim(&lake.local_dir().join(crate::SCRATCH))?;
            (dir.path().display().to_string(), Some(dir))
        };
        let shared = SharedTables { base, options: lake.storage.clone(), store: lake.store_params(), written: Default::default(), _local: local };
        context.state_ref().write().config_mut().set_extension(Arc::new(shared));
        Ok(())
    }

    /// Those of `context`, when its queries run on a cluster.
    pub(crate) fn of(context: &SessionContext) -> Option<Arc<SharedTables>> {
        context.state_ref().read().config().get_extension::<SharedTables>()
    }

    /// Registers `batches` as the table `name` of `context`: [`SharedTables::register_stream`].
    pub(crate) async fn register(&self, context: &SessionContext, name: &str, schema: SchemaRef, batches: Vec<RecordBatch>) -> std::result::Result<(), crate::BatchError> {
        self.register_stream(context, name, crate::batch_stream(schema, batches.into_iter().map(Ok))).await
    }

    /// Registers the rows of `stream` as the table `name` of `context`, written as they come into
    /// a dataset of the directory (so the client never holds the table whole); an empty table
    /// stays in memory (it travels as nothing).
    pub(crate) async fn register_stream(&self, context: &SessionContext, name: &str, mut stream: SendableRecordBatchStream) -> std::result::Result<(), crate::BatchError> {
        let schema = stream.schema();
        let first = loop {
            match stream.try_next().await? {
                Some(batch) if batch.num_rows() == 0 => continue,
                other => break other,
            }
        };
        let Some(first) = first else {
            return crate::register_in_memory(context, name, schema, Vec::new());
        };
        let rows: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::once(async { Ok(first) }).chain(stream)));
        let uri = {
            let written = self.written.lock().expect("shared tables");
            format!("{}/{name}-{}.lance", self.base, written.len())
        };
        let params = lance::dataset::WriteParams { mode: lance::dataset::WriteMode::Create, store_params: self.store.clone(), ..Default::default() };
        let dataset = lance::dataset::InsertBuilder::new(uri.as_str())
            .with_params(&params)
            .execute_stream(rows)
            .await
            .map_err(|source| crate::BatchError::Lance { dataset: uri.clone(), source })?;
        context.deregister_table(name)?;
        context.register_table(name, Arc::new(LakeTable::of(&dataset, uri, self.options.as_deref())))?;
        self.written.lock().expect("shared tables").push(dataset);
        Ok(())
    }


    fn take_remote(&self) -> Vec<Dataset> {
        if self._local.is_some() {
            return Vec::new();
        }
        std::mem::take(&mut *self.written.lock().expect("shared tables"))
    }
}

/// Removes `datasets` from their store (`what` they are, for the warning a failure logs: the
/// job's results are written).
pub(crate) async fn remove_datasets(datasets: Vec<Dataset>, what: &str) {
    for dataset in datasets {
        let removed = match dataset.object_store(None).await {
            Ok(store) => store.remove_dir_all(dataset.branch_location().path).await,
            Err(error) => Err(error),
        };
        if let Err(error) = removed {
            tracing::warn!(table = dataset.uri(), %error, "{what} was not removed");
        }
    }
}

/// Removes the tables `context` shared with a cluster's executors in an object store, at the end
/// of a job (when dropped instead, they are removed in the background if a runtime is there).
pub(crate) async fn release(context: &SessionContext) {
    if let Some(shared) = SharedTables::of(context) {
        remove_datasets(shared.take_remote(), "a shared table of the job").await;
    }
}

impl Drop for SharedTables {
    fn drop(&mut self) {
        let written = self.take_remote();
        if let (false, Ok(runtime)) = (written.is_empty(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(remove_datasets(written, "a shared table of the job"));
        }
    }
}

/// Where a dataset of the lake is, as executors open it.
#[derive(Debug, Clone, PartialEq)]
struct Source {
    uri: String,
    version: u64,
    options: BTreeMap<String, String>,
}

impl Source {
    async fn open(&self) -> Result<Dataset> {
        let builder = DatasetBuilder::from_uri(&self.uri).with_version(self.version);
        let builder = if self.options.is_empty() { builder } else { builder.with_storage_options(self.options.clone().into_iter().collect()) };
        builder.load().await.map_err(|error| DataFusionError::External(Box::new(error)))
    }

    /// One line each: the URI, the version, then `key\tvalue` per storage option.
    fn encode(&self, buf: &mut Vec<u8>) {
        let mut text = format!("{}\n{}\n", self.uri, self.version);
        for (key, value) in &self.options {
            text.push_str(&format!("{key}\t{value}\n"));
        }
        buf.extend_from_slice(text.as_bytes());
    }

    fn decode(buf: &[u8]) -> Result<Source> {
        let bad = || DataFusionError::Internal("a lake table's encoding is not URI, version, options".into());
        let text = std::str::from_utf8(buf).map_err(|_| bad())?;
        let mut lines = text.lines();
        let uri = lines.next().ok_or_else(bad)?.to_string();
        let version = lines.next().and_then(|line| line.parse().ok()).ok_or_else(bad)?;
        let options = lines.map(|line| line.split_once('\t').map(|(key, value)| (key.to_string(), value.to_string())).ok_or_else(bad)).collect::<Result<_>>()?;
        Ok(Source { uri, version, options })
    }
}

/// A dataset of the lake at one version, which travels to executors as its [`Source`].
#[derive(Debug)]
pub(crate) struct LakeTable {
    source: Source,
    schema: SchemaRef,
}

impl LakeTable {
    /// The dataset `dataset` (as opened from `uri` with the storage `options`), at its version.
    pub(crate) fn of(dataset: &Dataset, uri: String, options: Option<&std::collections::HashMap<String, String>>) -> LakeTable {
        let options = options.map(|options| options.iter().map(|(key, value)| (key.clone(), value.clone())).collect()).unwrap_or_default();
        let schema = Arc::new(Schema::from(dataset.schema()));
        LakeTable { source: Source { uri, version: dataset.version_id(), options }, schema }
    }
}

#[async_trait::async_trait]
impl TableProvider for LakeTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// The dataset's fragments, dealt in turn to as many partitions as the session's target.
    async fn scan(&self, state: &dyn Session, projection: Option<&Vec<usize>>, _filters: &[Expr], _limit: Option<usize>) -> Result<Arc<dyn ExecutionPlan>> {
        let dataset = self.source.open().await?;
        let fragments: Vec<u64> = dataset.get_fragments().iter().map(|fragment| fragment.id() as u64).collect();
        let partitions = state.config().target_partitions().clamp(1, fragments.len().max(1));
        let mut groups = vec![Vec::new(); partitions];
        for (position, fragment) in fragments.into_iter().enumerate() {
            groups[position % partitions].push(fragment);
        }
        let columns = match projection {
            Some(indices) => indices.iter().map(|&index| self.schema.field(index).name().clone()).collect(),
            None => self.schema.fields().iter().map(|field| field.name().clone()).collect(),
        };
        LakeScanExec::new(self.source.clone(), &self.schema, columns, groups).map(|scan| Arc::new(scan) as Arc<dyn ExecutionPlan>)
    }
}

/// Reads the fragments of each partition of a lake dataset: every executor opens the dataset.
#[derive(Debug)]
pub(crate) struct LakeScanExec {
    source: Source,
    /// The columns read, by name.
    columns: Vec<String>,
    /// The fragment ids of each partition.
    fragments: Vec<Vec<u64>>,
    properties: Arc<PlanProperties>,
}

impl LakeScanExec {
    fn new(source: Source, table: &SchemaRef, columns: Vec<String>, fragments: Vec<Vec<u64>>) -> Result<LakeScanExec> {
        let fields = columns.iter().map(|name| table.field_with_name(name).cloned()).collect::<std::result::Result<Vec<_>, _>>()?;
        let schema = Arc::new(Schema::new(fields));
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(fragments.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(LakeScanExec { source, columns, fragments, properties: Arc::new(properties) })
    }

    /// Its schema (Arrow IPC), then its columns (a tab-separated line) and each partition's
    /// fragment ids (a space-separated line each), both length-prefixed, then its source.
    fn encode(&self, buf: &mut Vec<u8>) -> Result<()> {
        put_length_prefixed(buf, &ipc_bytes(&self.schema(), &[])?);
        let mut text = format!("{}\n", self.columns.join("\t"));
        for partition in &self.fragments {
            let ids: Vec<String> = partition.iter().map(u64::to_string).collect();
            text.push_str(&format!("{}\n", ids.join(" ")));
        }
        put_length_prefixed(buf, text.as_bytes());
        self.source.encode(buf);
        Ok(())
    }

    fn decode(buf: &[u8]) -> Result<LakeScanExec> {
        let bad = || DataFusionError::Internal("a lake scan's encoding is truncated".into());
        let (schema, rest) = length_prefixed(buf).ok_or_else(bad)?;
        let (text, source) = length_prefixed(rest).ok_or_else(bad)?;
        let (schema, _) = from_ipc(schema)?;
        let text = std::str::from_utf8(text).map_err(|_| bad())?;
        let mut lines = text.lines();
        let columns: Vec<String> = lines.next().ok_or_else(bad)?.split('\t').filter(|name| !name.is_empty()).map(str::to_string).collect();
        let fragments = lines
            .map(|line| line.split_whitespace().map(|id| id.parse().map_err(|_| bad())).collect::<Result<Vec<u64>>>())
            .collect::<Result<Vec<_>>>()?;
        LakeScanExec::new(Source::decode(source)?, &schema, columns, fragments)
    }
}

impl DisplayAs for LakeScanExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "LakeScanExec: {} version {}, columns [{}]", self.source.uri, self.source.version, self.columns.join(", "))
    }
}

impl ExecutionPlan for LakeScanExec {
    fn name(&self) -> &str {
        "LakeScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(self: Arc<Self>, _: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, partition: usize, _: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let ids = self.fragments.get(partition).cloned().ok_or_else(|| DataFusionError::Internal(format!("a lake scan has no partition {partition}")))?;
        let (source, columns, schema) = (self.source.clone(), self.columns.clone(), self.schema());
        let rows = schema.clone();
        let external = |error: lance::Error| DataFusionError::External(Box::new(error));
        let batches = futures::stream::once(async move {
            if ids.is_empty() {
                return Ok::<_, DataFusionError>(futures::stream::empty().boxed());
            }
            let dataset = source.open().await?;
            let fragments = ids
                .iter()
                .map(|&id| dataset.get_fragment(id as usize).map(|fragment| fragment.metadata().clone()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| DataFusionError::Internal(format!("{} version {} lacks a fragment of {ids:?}", source.uri, source.version)))?;
            let mut scanner = dataset.scan();
            scanner.with_fragments(fragments);
            // no column (a count): read the narrowest, keep only the number of rows
            let read = if columns.is_empty() { vec![dataset.schema().fields[0].name.clone()] } else { columns };
            scanner.project(&read).map_err(external)?;
            let stream = scanner.try_into_stream().await.map_err(external)?;
            Ok(stream
                .map(move |batch| {
                    let batch = batch.map_err(external)?;
                    if rows.fields().is_empty() {
                        let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
                        return Ok(RecordBatch::try_new_with_options(rows.clone(), vec![], &options)?);
                    }
                    Ok(batch)
                })
                .boxed())
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

/// What marks the lake's own encodings, which no protobuf message of Ballista's starts with.
const LAKE_TABLE: &[u8] = b"\0sellable:lake-table\0";
const MEMORY_TABLE: &[u8] = b"\0sellable:memory-table\0";
const LAKE_SCAN: &[u8] = b"\0sellable:lake-scan\0";

/// The logical codec: lake tables and in-memory tables, and `id_hash`; the rest is Ballista's.
#[derive(Debug, Default)]
pub struct LakeLogicalCodec {
    ballista: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for LakeLogicalCodec {
    fn try_decode(&self, buf: &[u8], inputs: &[datafusion::logical_expr::LogicalPlan], ctx: &TaskContext) -> Result<Extension> {
        self.ballista.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.ballista.try_encode(node, buf)
    }

    fn try_decode_table_provider(&self, buf: &[u8], table: &TableReference, schema: SchemaRef, ctx: &TaskContext) -> Result<Arc<dyn TableProvider>> {
        if let Some(source) = buf.strip_prefix(LAKE_TABLE) {
            return Ok(Arc::new(LakeTable { source: Source::decode(source)?, schema }));
        }
        if let Some(rest) = buf.strip_prefix(MEMORY_TABLE) {
            let mut partitions = Vec::new();
            let mut rest = rest;
            while !rest.is_empty() {
                let (partition, after) = length_prefixed(rest).ok_or_else(|| DataFusionError::Internal(format!("table {table}: a truncated partition")))?;
                partitions.push(from_ipc(partition)?.1);
                rest = after;
            }
            return Ok(Arc::new(MemTable::try_new(schema, partitions)?));
        }
        self.ballista.try_decode_table_provider(buf, table, schema, ctx)
    }

    fn try_encode_table_provider(&self, table: &TableReference, node: Arc<dyn TableProvider>, buf: &mut Vec<u8>) -> Result<()> {
        if let Some(lake) = node.downcast_ref::<LakeTable>() {
            buf.extend_from_slice(LAKE_TABLE);
            lake.source.encode(buf);
            return Ok(());
        }
        if let Some(memory) = node.downcast_ref::<MemTable>() {
            buf.extend_from_slice(MEMORY_TABLE);
            for partition in &memory.batches {
                let batches = partition.try_read().map_err(|_| DataFusionError::Internal(format!("table {table} is being written")))?;
                put_length_prefixed(buf, &ipc_bytes(&memory.schema(), &batches)?);
            }
            return Ok(());
        }
        self.ballista.try_encode_table_provider(table, node, buf)
    }

    fn try_decode_file_format(&self, buf: &[u8], ctx: &TaskContext) -> Result<Arc<dyn datafusion::datasource::file_format::FileFormatFactory>> {
        self.ballista.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(&self, buf: &mut Vec<u8>, node: Arc<dyn datafusion::datasource::file_format::FileFormatFactory>) -> Result<()> {
        self.ballista.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        lake_function(name).map_or_else(|| self.ballista.try_decode_udf(name, buf), Ok)
    }
}

/// The physical codec: lake scans, and `id_hash`; the rest is Ballista's.
#[derive(Debug, Default)]
pub struct LakePhysicalCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for LakePhysicalCodec {
    fn try_decode(&self, buf: &[u8], inputs: &[Arc<dyn ExecutionPlan>], ctx: &TaskContext) -> Result<Arc<dyn ExecutionPlan>> {
        match buf.strip_prefix(LAKE_SCAN) {
            Some(scan) => Ok(Arc::new(LakeScanExec::decode(scan)?)),
            None => self.ballista.try_decode(buf, inputs, ctx),
        }
    }

    fn try_encode(&self, node: Arc<dyn ExecutionPlan>, buf: &mut Vec<u8>) -> Result<()> {
        match node.downcast_ref::<LakeScanExec>() {
            Some(scan) => {
                buf.extend_from_slice(LAKE_SCAN);
                scan.encode(buf)
            }
            None => self.ballista.try_encode(node, buf),
        }
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        lake_function(name).map_or_else(|| self.ballista.try_decode_udf(name, buf), Ok)
    }
}

/// The functions the nightly job registers, by name.
fn lake_function(name: &str) -> Option<Arc<ScalarUDF>> {
    let id_hash = crate::id_hash_udf();
    (id_hash.name() == name).then(|| Arc::new(id_hash))
}

/// `batches` (possibly none) as one Arrow IPC stream of `schema`.
fn ipc_bytes(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    Ok(writer.into_inner()?)
}

fn from_ipc(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let reader = arrow_ipc::reader::StreamReader::try_new(Cursor::new(bytes), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}

/// `bytes` after their length as a little-endian u64: what [`length_prefixed`] reads.
fn put_length_prefixed(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// The bytes after a little-endian u64 length, and what follows them.
fn length_prefixed(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let length = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?) as usize;
    let rest = &buf[8..];
    (rest.len() >= length).then(|| rest.split_at(length))
}
