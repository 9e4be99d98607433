//! The command line: every command, its arguments and their parsers (clap's derive). Each
//! argument's `[config: …]` names the configuration key that sets its default (`config.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use sellable_batch::Lake;
use sellable_core::event::parse_rfc3339;
use sellable_core::{FoldConfig, Millis};
use sellable_serving::RuleBook;

use crate::config;

/// sellable: a real-time available-to-promise engine.
///
/// Batch computes a view of every sku×node from a lake of events (Lance + DataFusion), speed folds
/// the events that arrived since into Redis (or memory), and serving merges both to answer
/// "can we promise qty units of this SKU in this region now?" over REST.
///
/// Start with `sellable demo`: it generates a marketplace, runs every layer and serves it.
#[derive(Parser)]
#[command(name = "sellable", version, about, long_about)]
pub struct Cli {
    /// Configuration file (TOML, see examples/sellable.toml), given before the command. Its
    /// values, then SELLABLE__<SECTION>__<KEY> environment variables over them, become the
    /// defaults of the flags; flags win.
    #[arg(long, env = "SELLABLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log as JSON lines instead of text (filter with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the whole system locally: generate a marketplace, compute the batch view, fold the
    /// last day of events into the speed view, and serve REST until Ctrl-C.
    Demo(DemoArgs),
    /// Generate a deterministic synthetic marketplace (catalog, events, ground truth) as Parquet.
    Gen(GenArgs),
    /// The lake of Lance datasets: import into it, and see what it holds.
    #[command(subcommand)]
    Lake(LakeCommand),
    /// The nightly job: compute the snapshot (batch view) and the features as of a cutoff with
    /// DataFusion, or only the features of every midnight of a range (a backfill).
    Batch(BatchArgs),
    /// Build a training set: one row per order placed in [FROM, TO), labelled by whether it was
    /// shorted, with the features an answer at that time would have used.
    Trainset(TrainsetArgs),
    /// Train the p_fulfill model with XGBoost on the latest training set, evaluate it on held-out
    /// days against naive ATP and the best static safety stock, and register it (report.html,
    /// metrics.json) as a new version in the models directory.
    Train(TrainArgs),
    /// The model registry: list versions, show one, promote one to live, roll back.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Replay a past period: what the engine (a model version and rule files) would have decided
    /// for every order, beside what happened and the baselines, as CSV plus a summary.
    Backtest(BacktestArgs),
    /// Fold events into the speed view in Redis: those that arrived after the batch cutoff (from
    /// the lake or a file), or, with --stream, a Redis Stream as a consumer group, until Ctrl-C.
    Fold(FoldArgs),
    /// Archive a Redis Stream into the lake: every accepted event exactly once (a consumer group of
    /// its own, beside the fold workers'), in micro-batches, until Ctrl-C.
    Archive(ArchiveArgs),
    /// Compare the speed view in Redis with a fold of the lake's events after the cutoff; list
    /// every drifted sku×node with both values, and with --repair rewrite them atomically.
    Reconcile(ReconcileArgs),
    /// Append the events of a Parquet / JSON Lines file to a Redis Stream, one entry each.
    Publish(PublishArgs),
    /// List the newest dead letters of a stream: malformed or too-late events, with the reason.
    Deadletters(DeadlettersArgs),
    /// Serve the REST API over the lake's batch view and the speed view.
    Serve(ServeArgs),
    /// The whole loop in one process, on Redis and the lake: HTTP ingestion into a stream, fold
    /// workers, the archiver, the nightly job and cutover on a schedule, model reload, serving.
    Run(RunArgs),
    /// Check, test and explain merchandising rule files.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// API keys of the REST API.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// A Ballista cluster for `sellable batch --engine ballista --scheduler`: its scheduler and
    /// its executors, which read the lake's datasets and the job's tables with sellable's codecs.
    #[command(subcommand)]
    Ballista(BallistaCommand),
}

#[derive(Subcommand)]
pub enum BallistaCommand {
    /// Run a scheduler until killed.
    Scheduler(SchedulerArgs),
    /// Run an executor of a scheduler until Ctrl-C or SIGTERM.
    Executor(ExecutorArgs),
}

#[derive(Args)]
pub struct SchedulerArgs {
    /// Address the scheduler listens on (clients connect to `df://HOST:PORT`).
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub bind: SocketAddr,
}

#[derive(Args)]
pub struct ExecutorArgs {
    /// The scheduler, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub scheduler: String,
    /// Host the executor listens on and gives the scheduler.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port of its Flight service (other executors and clients fetch its results there).
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
    /// Port of its gRPC service.
    #[arg(long, default_value_t = 50052)]
    pub grpc_port: u16,
    /// Tasks run at once [default: the number of cores].
    #[arg(long)]
    pub tasks: Option<usize>,
    /// Memory (MiB) its tasks may hold together before spilling [default: no limit].
    #[arg(long, value_parser = memory_mb)]
    pub memory_mb: Option<usize>,
    /// Where shuffle files go [default: a temporary directory].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a new random key: prints the key once (give it to its client) and the entry to add to
    /// `[[serve.keys]]` of the configuration file (only the key's SHA-256 is kept there).
    New(KeysNewArgs),
}

#[derive(Args)]
pub struct KeysNewArgs {
    /// Who holds the key (named in logs and metrics instead of the key).
    #[arg(long)]
    pub name: String,
    /// What the key may do: read, reserve, ingest, admin (commas between several).
    #[arg(long, value_delimiter = ',', required = true)]
    pub scope: Vec<sellable_serving::door::Scope>,
}

#[derive(Subcommand)]
pub enum LakeCommand {
    /// Import a catalog and events (a `gen` output directory, or one Parquet/JSON Lines events
    /// file) into the lake as new Lance dataset versions. Bad events are reported with their line
    /// or row and field, and skipped; an input that cannot be read changes nothing.
    Import(ImportArgs),
    /// Every dataset of the lake: version, versions kept, rows, size; the events' time range.
    Info(LakeArgs),
}

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Every version: created, rounds, threshold, headline metrics; the live one marked.
    List(ModelsDirArgs),
    /// One version's manifest (features, threshold, lineage, metrics) and where its report is.
    Show(ModelVersionArgs),
    /// Make a version live (serving picks it up within a second). A version that does not load
    /// or computes other features is refused and the live one stays.
    Promote(ModelVersionArgs),
    /// Go back to the version live before the current one.
    Rollback(ModelsDirArgs),
}

#[derive(Args)]
pub struct ModelsDirArgs {
    /// The model registry directory [config: models.path].
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
}

#[derive(Args)]
pub struct ModelVersionArgs {
    #[command(flatten)]
    pub dir: ModelsDirArgs,
    /// A version: v1, v2, …
    pub version: String,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub lake: LakeArgs,
    #[command(flatten)]
    pub models: ModelsDirArgs,
    /// Training configuration (TOML; every key optional, see docs/models.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Promote the new version right away.
    #[arg(long)]
    pub promote: bool,
}

#[derive(Args)]
pub struct BacktestArgs {
    #[command(flatten)]
    pub lake: LakeArgs,
    #[command(flatten)]
    pub models: ModelsDirArgs,
    /// Model version [default: the live one]; `none` decides with the rules on naive ATP only.
    #[arg(long)]
    pub model: Option<String>,
    /// Rule files (or directories of `*.rules` files) to apply on top of the model.
    #[arg(long)]
    pub rules: Vec<PathBuf>,
    #[command(flatten)]
    pub schema: SchemaArgs,
    /// First order time (RFC 3339 or milliseconds), included.
    #[arg(long, value_parser = parse_time)]
    pub from: Millis,
    /// Last order time, excluded.
    #[arg(long, value_parser = parse_time)]
    pub to: Millis,
    /// The per-order CSV; the summary goes beside it as FILE.summary.json.
    #[arg(long, default_value = "backtest.csv")]
    pub out: PathBuf,
    /// Also decide the same orders with this model version (`none`: the rules on naive ATP) and
    /// report the orders decided otherwise (FILE.changes.csv) with the net oversells and false
    /// denies [default: --model's].
    #[arg(long)]
    pub compare_model: Option<String>,
    /// Also decide the same orders with these rule files instead of --rules (the same model
    /// unless --compare-model), and report as --compare-model does.
    #[arg(long)]
    pub compare_rules: Vec<PathBuf>,
}

#[derive(Subcommand)]
pub enum RulesCommand {
    /// Report every error and warning of rule files; exit code 1 if there is an error.
    Check(RuleFilesArgs),
    /// Run the `test` blocks of rule files; exit code 1 if one fails.
    Test(RuleFilesArgs),
    /// Show what the rules decide for one request against the lake's views.
    Explain(ExplainArgs),
    /// Publish a directory of rule files to the directory a server reads, whole: check it, run
    /// its tests, refuse it if it drops a whole ruleset or most rules (unless --force), copy it
    /// beside the live one and swap a link to it in one step.
    Publish(PublishRulesArgs),
}

#[derive(Args)]
pub struct PublishRulesArgs {
    /// The directory of `*.rules` files to publish.
    pub dir: PathBuf,
    /// The directory the server reads (`serve.rules`): made a link to the published copy (copies
    /// are kept in `LIVE.releases/`).
    #[arg(long)]
    pub to: PathBuf,
    /// Publish even if it drops a whole ruleset or most rules.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub schema: SchemaArgs,
}

#[derive(Args)]
pub struct RuleFilesArgs {
    /// Rule files (or directories of `*.rules` files).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub schema: SchemaArgs,
}

#[derive(Args)]
pub struct SchemaArgs {
    /// A free-form catalog attribute rules may use as `sku.NAME`: NAME:bool, NAME:number or
    /// NAME:text. Repeatable.
    #[arg(long = "attribute", value_parser = parse_attribute, default_value = "fragile:bool")]
    pub attributes: Vec<(String, sellable_dsl::Type)>,
}

impl SchemaArgs {
    pub fn schema(&self) -> sellable_dsl::Schema {
        self.attributes
            .iter()
            .fold(sellable_dsl::Schema::standard(), |schema, (name, ty)| schema.with_attribute(name, *ty))
    }
}

fn parse_attribute(text: &str) -> Result<(String, sellable_dsl::Type), String> {
    let (name, ty) = text.split_once(':').ok_or_else(|| format!("expected NAME:TYPE, got '{text}'"))?;
    let ty = match ty {
        "bool" => sellable_dsl::Type::Bool,
        "number" => sellable_dsl::Type::Number,
        "text" => sellable_dsl::Type::Text,
        other => return Err(format!("unknown type '{other}': use bool, number or text")),
    };
    Ok((name.to_string(), ty))
}

#[derive(Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub files: RuleFilesArgs,
    #[command(flatten)]
    pub lake: LakeArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub models: ModelsDirArgs,
    #[arg(long)]
    pub sku: String,
    #[arg(long)]
    pub region: String,
    #[arg(long, default_value_t = 1)]
    pub qty: i64,
}

#[derive(Args)]
pub struct SimArgs {
    /// Seed: the same seed and sizes give the same files.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 1_000)]
    pub skus: usize,
    #[arg(long, default_value_t = 40)]
    pub nodes: usize,
    #[arg(long, default_value_t = 7.0)]
    pub days: f64,
    /// Mean orders per SKU per day (before popularity, daily cycle and bursts).
    #[arg(long, default_value_t = 6.0)]
    pub orders_per_sku_day: f64,
    /// How many times the base rate demand runs at during its random bursts (10 minutes to an
    /// hour, every 6 hours to 2 days): tens for flash sales. Stock levels scale with it past 5.
    #[arg(long, default_value_t = 5.0)]
    pub burst_factor: f64,
    /// The nodes' hidden dynamics: `default`, or `quiet-with-phantom-stock` (twice the hidden
    /// shrink, caught by counts five times as frequent; fewer sellers over-reporting; feeds three
    /// times slower; a short rate near 1%).
    #[arg(long, default_value = "default", value_parser = ["default", "quiet-with-phantom-stock"])]
    pub dynamics: String,
}

#[derive(Args)]
pub struct GenArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub sim: SimArgs,
    /// Simulated start, RFC 3339 or milliseconds since the epoch [default: 2026-01-01T00:00:00Z].
    #[arg(long, value_parser = parse_time)]
    pub start: Option<Millis>,
}

#[derive(Args)]
pub struct LakeArgs {
    /// The lake: a directory of Lance datasets, or an `s3://bucket/prefix` URI (endpoint and
    /// credentials from the `AWS_*` environment variables) [config: lake.path].
    #[arg(long, default_value = "lake")]
    pub lake: PathBuf,
    /// Events arriving more than this many milliseconds after they happened are rejected
    /// [config: lake.lateness_ms].
    #[arg(long, default_value_t = FoldConfig::default().lateness_ms)]
    pub lateness_ms: Millis,
    /// Remember folded event ids for this many milliseconds of arrival time per SKU; older
    /// events are refused (dead-lettered) since they could be forgotten replays [default: until
    /// the next batch cutoff; config: lake.dedup_window_ms].
    #[arg(long)]
    pub dedup_window_ms: Option<Millis>,
    /// Memory (MiB) one DataFusion query may hold before spilling to disk, at least 64 [config:
    /// lake.memory_mb].
    #[arg(long, default_value_t = sellable_batch::DEFAULT_MEMORY_LIMIT >> 20, value_parser = memory_mb)]
    pub memory_mb: usize,
}

/// Parses `--memory-mb`.
pub fn memory_mb(text: &str) -> Result<usize, String> {
    let mb: usize = text.parse().map_err(|_| format!("not a whole number of MiB: '{text}'"))?;
    if (mb as u64) < sellable_batch::MIN_MEMORY_MB {
        return Err(format!("{mb} MiB is too little: DataFusion needs at least {}", sellable_batch::MIN_MEMORY_MB));
    }
    Ok(mb)
}

impl LakeArgs {
    pub fn open(&self) -> Result<Lake> {
        let location = self.lake.to_str().with_context(|| format!("the lake {} is not a UTF-8 path or URI", self.lake.display()))?;
        Ok(Lake::at(location)?.with_memory_limit(self.memory_mb << 20))
    }


    pub fn fold_config(&self) -> FoldConfig {
        FoldConfig { lateness_ms: self.lateness_ms, dedup_window_ms: self.dedup_window_ms }
    }
}

#[derive(Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub lake: LakeArgs,
    /// A `sellable gen` directory, or a Parquet / JSON Lines file of events.
    #[arg(long)]
    pub from: PathBuf,
}

#[derive(Args)]
pub struct BatchArgs {
    #[command(flatten)]
    pub lake: LakeArgs,
    /// Cutoff, RFC 3339 or milliseconds: the view holds the events that arrived at or before it
    /// [default: the latest arrival in the lake].
    #[arg(long, value_parser = parse_time, conflicts_with = "every_day")]
    pub asof: Option<Millis>,
    /// Backfill the features as of every midnight (UTC) from FROM to TO, both included:
    /// `2026-01-02..2026-01-07` or RFC 3339 / millisecond bounds. The batch view is left as is.
    #[arg(long, value_parser = parse_day_range)]
    pub every_day: Option<(Millis, Millis)>,
    /// Where the job's queries run: DataFusion in this process, or a Ballista cluster (the one of
    /// `--scheduler`, else a standalone scheduler and executor in this process). Both give the
    /// same rows.
    #[arg(long, value_enum, default_value_t = EngineArg::Local)]
    pub engine: EngineArg,
    /// The Ballista scheduler, `df://HOST:PORT` (it and its executors run `sellable ballista
    /// scheduler|executor`).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Fold only the events that arrived since the last incremental night (its state is kept in
    /// the lake under nightly_state/), when the cutoff is a whole number of days after it; else
    /// (a first night, another cutoff, lateness or catalog) recompute everything and keep the
    /// state for the next night. Both give the same rows. Local engine only.
    #[arg(long, conflicts_with_all = ["every_day", "full"])]
    pub incremental: bool,
    /// Recompute everything from the lake's events, and keep the state an incremental night
    /// starts from.
    #[arg(long, conflicts_with = "every_day")]
    pub full: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    Local,
    Ballista,
}

impl BatchArgs {
    pub fn engine(&self) -> Result<sellable_batch::Engine> {
        match (self.engine, &self.scheduler) {
            (EngineArg::Ballista, _) if self.incremental || self.full => {
                anyhow::bail!("--incremental and --full keep the state of the incremental nightly job, which runs on the local engine")
            }
            (EngineArg::Local, None) => Ok(sellable_batch::Engine::Local),
            (EngineArg::Local, Some(_)) => anyhow::bail!("--scheduler names a Ballista cluster: add --engine ballista"),
            (EngineArg::Ballista, Some(url)) if !url.starts_with("df://") || !url.trim_start_matches("df://").contains(':') => {
                anyhow::bail!("--scheduler {url}: a Ballista scheduler is df://HOST:PORT")
            }
            (EngineArg::Ballista, scheduler) => Ok(sellable_batch::Engine::Ballista { scheduler: scheduler.clone() }),
        }
    }
}

#[derive(Args)]
pub struct TrainsetArgs {
    #[command(flatten)]
    pub lake: LakeArgs,
    /// First order time (RFC 3339 or milliseconds), included.
    #[arg(long, value_parser = parse_time)]
    pub from: Millis,
    /// Last order time, excluded.
    #[arg(long, value_parser = parse_time)]
    pub to: Millis,
}

#[derive(Args)]
pub struct RedisArgs {
    /// Redis URL for the speed view; without it, the speed view is embedded in memory
    /// [config: redis.url, or REDIS_URL].
    #[arg(long)]
    pub redis: Option<String>,
    /// Key namespace in Redis [config: redis.namespace].
    #[arg(long, default_value = "sellable")]
    pub namespace: String,
}

#[derive(Args)]
pub struct FoldArgs {
    #[command(flatten)]
    pub lake: LakeArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Fold this Parquet / JSON Lines file instead of the lake's events after the cutoff.
    #[arg(long, conflicts_with = "stream")]
    pub from: Option<PathBuf>,
    /// Consume this Redis Stream (entries written by `sellable publish`) instead.
    #[arg(long)]
    pub stream: Option<String>,
    /// Consumer group of the stream.
    #[arg(long, default_value = "sellable-fold")]
    pub group: String,
    /// Consumer name; a restarted worker with the same name resumes its unacknowledged entries.
    #[arg(long, default_value = "worker")]
    pub consumer: String,
    /// Concurrent consumers in this process (named CONSUMER-1 … CONSUMER-N).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Stream entries a worker reads at once (at most; fewer when fewer are waiting).
    #[arg(long, default_value_t = 4000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    /// Stop after the stream has had nothing new for this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub until_idle: Option<f64>,
}

#[derive(Args)]
pub struct ArchiveArgs {
    #[command(flatten)]
    pub lake: LakeArgs,
    /// The Redis holding the stream [config: redis.url, or REDIS_URL].
    #[arg(long, default_value = config::LOCAL_REDIS)]
    pub redis: String,
    /// The stream to archive (entries written by `sellable publish` or `POST /v1/events`).
    #[arg(long)]
    pub stream: String,
    /// Consumer name in the archive group; run one archiver per stream.
    #[arg(long, default_value = "archiver")]
    pub consumer: String,
    /// Entries per micro-batch at most.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch: u64,
    /// A micro-batch is written at the latest this many milliseconds after its first entry.
    #[arg(long, default_value_t = 1_000)]
    pub max_delay_ms: u64,
    /// Stop after the stream has had nothing new for this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub until_idle: Option<f64>,
}

/// A Redis that must be there, and the key namespace in it.
#[derive(Args)]
pub struct RedisServerArgs {
    /// The Redis [config: redis.url, or REDIS_URL].
    #[arg(long, default_value = config::LOCAL_REDIS)]
    pub redis: String,
    /// Key namespace in Redis (the prefix of every key, and of `run`'s epochs and groups)
    /// [config: redis.namespace].
    #[arg(long, default_value = "sellable")]
    pub namespace: String,
}

#[derive(Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub lake: LakeArgs,
    #[command(flatten)]
    pub server: RedisServerArgs,
    /// Rewrite every drifted sku×node with the lake's value.
    #[arg(long)]
    pub repair: bool,
}

#[derive(Args)]
pub struct PublishArgs {
    #[arg(long, default_value = config::LOCAL_REDIS)]
    pub redis: String,
    #[arg(long)]
    pub stream: String,
    /// A Parquet / JSON Lines events file.
    #[arg(long)]
    pub from: PathBuf,
}

#[derive(Args)]
pub struct DeadlettersArgs {
    #[arg(long, default_value = config::LOCAL_REDIS)]
    pub redis: String,
    /// The stream whose dead letters to list (they are in STREAM:dead) [default: the events
    /// refused by `POST /v1/events` and `fold --from`, in NAMESPACE:dead].
    #[arg(long)]
    pub stream: Option<String>,
    #[arg(long, default_value = "sellable")]
    pub namespace: String,
    #[arg(long, default_value_t = 20)]
    pub count: usize,
}

#[derive(Args)]
pub struct RulesDirArgs {
    /// A directory of `*.rules` files, applied to every answer and reloaded when it changes
    /// [config: serve.rules].
    #[arg(long)]
    pub rules: Option<PathBuf>,
    #[command(flatten)]
    pub schema: SchemaArgs,
}

impl RulesDirArgs {
    pub fn book(&self) -> Result<Arc<RuleBook>> {
        Ok(Arc::new(match &self.rules {
            Some(dir) => RuleBook::from_dir(dir, self.schema.schema())?,
            None => RuleBook::empty(self.schema.schema()),
        }))
    }
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub lake: LakeArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub rules: RulesDirArgs,
    #[command(flatten)]
    pub models: ModelsDirArgs,
    /// Score this model version in shadow: logged beside the live score, never decides.
    #[arg(long)]
    pub shadow: Option<String>,
    /// Append the events `POST /v1/events` accepts to this Redis Stream (of the --redis server)
    /// before folding them, so the fold workers and the archiver (`sellable archive`) see them:
    /// every event then reaches the lake.
    #[arg(long, requires = "redis")]
    pub ingest_stream: Option<String>,
    /// Address of the REST API [config: serve.listen].
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Also serve Arrow Flight SQL over the lake's tables on this address, for analysts (ADBC,
    /// pyarrow; docs/analytics.md) [config: serve.analytics.listen].
    #[arg(long)]
    pub flight: Option<SocketAddr>,
}

/// What a `sellable run` process does.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Every role below, in one process.
    All,
    /// The nightly job and cutover on a schedule, and (unless `--workers 0`) the open epochs'
    /// fold workers.
    Batch,
    /// Fold workers of every open epoch, following the batch role's cutovers (scale by running
    /// more of them).
    Fold,
    /// The REST API (with `POST /v1/events` into the stream), following the batch role's epochs.
    Serve,
    /// The archiver: the stream into the lake.
    Archive,
}

#[derive(Args)]
pub struct RunArgs {
    /// What this process does; a deployment runs one `batch`, one `archive` and any number of
    /// `fold` and `serve` processes on one Redis and one lake.
    #[arg(long, value_enum, default_value = "all")]
    pub role: Role,
    #[command(flatten)]
    pub lake: LakeArgs,
    #[command(flatten)]
    pub server: RedisServerArgs,
    /// The ingestion stream: `POST /v1/events` appends to it, and producers may too.
    #[arg(long, default_value = "sellable-events")]
    pub stream: String,
    /// Fold workers per open epoch in this process (`all` runs at least one; `batch` with 0
    /// leaves folding to `fold` processes).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// With `--role fold`: the name of this process's consumers in each epoch's group. Keep it
    /// across restarts (a restarted consumer reads what it had taken first); give each fold
    /// process its own.
    #[arg(long, default_value = "fold")]
    pub consumer: String,
    /// Partitions (Redis hash slots used) of each new epoch's speed view; 0 sizes them by the
    /// catalog (about 5,000 SKUs each, 16 to 16,384). A new count takes effect at the next cutover.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=16_384))]
    pub partitions: u64,
    /// Seconds between nightly jobs (each computes the batch view as of its start and cuts over).
    #[arg(long, default_value_t = 86_400.0)]
    pub nightly_every: f64,
    #[command(flatten)]
    pub rules: RulesDirArgs,
    #[command(flatten)]
    pub models: ModelsDirArgs,
    /// Address of the REST API [config: serve.listen].
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Run the living system on this Redis (`sellable run`'s loop): the last day of the
    /// marketplace is replayed into it through the ingestion stream at --replay-speed, with a
    /// nightly cutover every --nightly-every simulated hours. Without it, the speed view is
    /// embedded and the last day is folded at start.
    #[arg(long)]
    pub redis: Option<String>,
    /// With --redis: how many times faster than real time the last day is replayed (60: one
    /// simulated hour per minute).
    #[arg(long, default_value_t = 60.0)]
    pub replay_speed: f64,
    /// With --redis: simulated hours between nightly jobs and cutovers.
    #[arg(long, default_value_t = 2.0)]
    pub nightly_every: f64,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the generated files and the lake go (replaced on every run).
    #[arg(long, default_value = "demo-data")]
    pub dir: PathBuf,
    #[command(flatten)]
    pub rules: RulesDirArgs,
    #[command(flatten)]
    pub sim: SimArgs,
}

/// `FROM..TO` as midnights: each bound is a date (`2026-01-02`), RFC 3339 or milliseconds,
/// rounded down to its midnight (UTC).
fn parse_day_range(text: &str) -> Result<(Millis, Millis), String> {
    let (from, to) = text.split_once("..").ok_or_else(|| format!("expected FROM..TO, got '{text}'"))?;
    let day = |bound: &str| {
        let bound = bound.trim();
        let time = if bound.len() == 10 { parse_time(&format!("{bound}T00:00:00Z")) } else { parse_time(bound) }?;
        Ok::<Millis, String>(time - time.rem_euclid(DAY_MS))
    };
    let (from, to) = (day(from)?, day(to)?);
    if to < from {
        return Err(format!("the range ends before it starts: '{text}'"));
    }
    Ok((from, to))
}

pub const DAY_MS: Millis = 86_400_000;

pub fn parse_time(text: &str) -> Result<Millis, String> {
    text.parse::<Millis>()
        .ok()
        .or_else(|| parse_rfc3339(text))
        .ok_or_else(|| format!("expected RFC 3339 (2026-01-07T00:00:00Z) or milliseconds, got '{text}'"))
}


#[cfg(test)]
mod tests {
    fn engine(args: &[&str]) -> anyhow::Result<sellable_batch::Engine> {
        use clap::Parser;
        let cli = super::Cli::try_parse_from(["sellable", "batch"].iter().chain(args)).unwrap();
        let super::Command::Batch(batch) = cli.command else { panic!("not a batch command") };
        batch.engine()
    }

    #[test]
    fn the_engine_is_local_or_a_ballista_cluster_named_by_its_scheduler() {
        use sellable_batch::Engine;
        assert_eq!(engine(&[]).unwrap(), Engine::Local);
        assert_eq!(engine(&["--engine", "ballista"]).unwrap(), Engine::Ballista { scheduler: None });
        let named = engine(&["--engine", "ballista", "--scheduler", "df://sched:50050"]).unwrap();
        assert_eq!(named, Engine::Ballista { scheduler: Some("df://sched:50050".into()) });
        assert!(engine(&["--scheduler", "df://sched:50050"]).unwrap_err().to_string().contains("add --engine ballista"));
        assert!(engine(&["--engine", "ballista", "--scheduler", "sched"]).unwrap_err().to_string().contains("df://HOST:PORT"));
        // the state of incremental nights is kept by the local engine only
        assert_eq!(engine(&["--incremental"]).unwrap(), Engine::Local);
        for flag in ["--incremental", "--full"] {
            assert!(engine(&["--engine", "ballista", flag]).unwrap_err().to_string().contains("local engine"), "{flag}");
        }
        use clap::Parser;
        assert!(super::Cli::try_parse_from(["sellable", "batch", "--incremental", "--full"]).is_err());
    }

    #[test]
    fn memory_below_what_datafusion_needs_is_refused_with_the_reason() {
        assert_eq!(super::memory_mb("64"), Ok(64));
        assert_eq!(super::memory_mb("32"), Err("32 MiB is too little: DataFusion needs at least 64".to_string()));
        assert!(super::memory_mb("lots").unwrap_err().contains("'lots'"));
    }
}
