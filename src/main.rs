//! `sellable`: the command-line binary. Argument parsing and glue only; the work is done by the
//! library crates (`core`, `batch`, `speed`, `serving`, `models`, `benchmarks`).

/// jemalloc instead of the system allocator: a stream worker allocates a few small values per
/// event (reply parsing, decoding, folding), and glibc's malloc and free were about 30% of its
/// time (fold +20%, training set +25%; the nightly job within noise, peak memory +5-10%:
/// `docs/benchmarks.md`). mimalloc, tried before, raised the nightly job's peak by 45%.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use sellable_batch::{Lake, Progress};
use sellable_bench::{generate, SimConfig};
use sellable_core::event::{format_millis, parse_rfc3339, read_event_file};
use sellable_core::{FoldConfig, Millis};
use sellable_models::registry::ModelLineage;
use sellable_models::{Registry, TrainConfig};
use sellable_serving::{ModelBook, ModelStatus, RuleBook, Serving};
use sellable_speed::SpeedView;

mod config;
use config::Config;

/// sellable: a real-time available-to-promise engine.
///
/// Batch computes a view of every sku×node from a lake of events (Lance + DataFusion), speed folds
/// the events that arrived since into Redis (or memory), and serving merges both to answer
/// "can we promise qty units of this SKU in this region now?" over REST.
///
/// Start with `sellable demo`: it generates a marketplace, runs every layer and serves it.
#[derive(Parser)]
#[command(name = "sellable", version, about, long_about)]
struct Cli {
    /// Configuration file (TOML, see examples/sellable.toml), given before the command. Its
    /// values, then SELLABLE__<SECTION>__<KEY> environment variables over them, become the
    /// defaults of the flags; flags win.
    #[arg(long, env = "SELLABLE_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of text (filter with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// Compare the speed view in Redis with a fold of the lake's events after the cutoff; list
    /// every drifted sku×node with both values, and with --repair rewrite them atomically.
    Reconcile(ReconcileArgs),
    /// Append the events of a Parquet / JSON Lines file to a Redis Stream, one entry each.
    Publish(PublishArgs),
    /// List the newest dead letters of a stream: malformed or too-late events, with the reason.
    Deadletters(DeadlettersArgs),
    /// Serve the REST API over the lake's batch view and the speed view.
    Serve(ServeArgs),
    /// Check, test and explain merchandising rule files.
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Subcommand)]
enum LakeCommand {
    /// Import a catalog and events (a `gen` output directory, or one Parquet/JSON Lines events
    /// file) into the lake as new Lance dataset versions. Bad events are reported with their line
    /// or row and field, and skipped; an input that cannot be read changes nothing.
    Import(ImportArgs),
    /// Every dataset of the lake: version, versions kept, rows, size; the events' time range.
    Info(LakeArgs),
}

#[derive(Subcommand)]
enum ModelsCommand {
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
struct ModelsDirArgs {
    /// The model registry directory [config: models.path].
    #[arg(long, default_value = "models")]
    models: PathBuf,
}

#[derive(Args)]
struct ModelVersionArgs {
    #[command(flatten)]
    dir: ModelsDirArgs,
    /// A version: v1, v2, …
    version: String,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    lake: LakeArgs,
    #[command(flatten)]
    models: ModelsDirArgs,
    /// Training configuration (TOML; every key optional, see docs/models.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Promote the new version right away.
    #[arg(long)]
    promote: bool,
}

#[derive(Args)]
struct BacktestArgs {
    #[command(flatten)]
    lake: LakeArgs,
    #[command(flatten)]
    models: ModelsDirArgs,
    /// Model version [default: the live one]; `none` decides with the rules on naive ATP only.
    #[arg(long)]
    model: Option<String>,
    /// Rule files (or directories of `*.rules` files) to apply on top of the model.
    #[arg(long)]
    rules: Vec<PathBuf>,
    #[command(flatten)]
    schema: SchemaArgs,
    /// First order time (RFC 3339 or milliseconds), included.
    #[arg(long, value_parser = parse_time)]
    from: Millis,
    /// Last order time, excluded.
    #[arg(long, value_parser = parse_time)]
    to: Millis,
    /// The per-order CSV; the summary goes beside it as FILE.summary.json.
    #[arg(long, default_value = "backtest.csv")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Report every error and warning of rule files; exit code 1 if there is an error.
    Check(RuleFilesArgs),
    /// Run the `test` blocks of rule files; exit code 1 if one fails.
    Test(RuleFilesArgs),
    /// Show what the rules decide for one request against the lake's views.
    Explain(ExplainArgs),
}

#[derive(Args)]
struct RuleFilesArgs {
    /// Rule files (or directories of `*.rules` files).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    schema: SchemaArgs,
}

#[derive(Args)]
struct SchemaArgs {
    /// A free-form catalog attribute rules may use as `sku.NAME`: NAME:bool, NAME:number or
    /// NAME:text. Repeatable.
    #[arg(long = "attribute", value_parser = parse_attribute, default_value = "fragile:bool")]
    attributes: Vec<(String, sellable_dsl::Type)>,
}

impl SchemaArgs {
    fn schema(&self) -> sellable_dsl::Schema {
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
struct ExplainArgs {
    #[command(flatten)]
    files: RuleFilesArgs,
    #[command(flatten)]
    lake: LakeArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    models: ModelsDirArgs,
    #[arg(long)]
    sku: String,
    #[arg(long)]
    region: String,
    #[arg(long, default_value_t = 1)]
    qty: i64,
}

#[derive(Args)]
struct SimArgs {
    /// Seed: the same seed and sizes give the same files.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 1_000)]
    skus: usize,
    #[arg(long, default_value_t = 40)]
    nodes: usize,
    #[arg(long, default_value_t = 7.0)]
    days: f64,
    /// Mean orders per SKU per day (before popularity, daily cycle and bursts).
    #[arg(long, default_value_t = 6.0)]
    orders_per_sku_day: f64,
}

#[derive(Args)]
struct GenArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    sim: SimArgs,
    /// Simulated start, RFC 3339 or milliseconds since the epoch [default: 2026-01-01T00:00:00Z].
    #[arg(long, value_parser = parse_time)]
    start: Option<Millis>,
}

#[derive(Args)]
struct LakeArgs {
    /// The lake: a directory of Lance datasets [config: lake.path].
    #[arg(long, default_value = "lake")]
    lake: PathBuf,
    /// Events arriving more than this many milliseconds after they happened are rejected
    /// [config: lake.lateness_ms].
    #[arg(long, default_value_t = FoldConfig::default().lateness_ms)]
    lateness_ms: Millis,
    /// Remember folded event ids for this many milliseconds of arrival time per SKU; older
    /// events are refused (dead-lettered) since they could be forgotten replays [default: until
    /// the next batch cutoff; config: lake.dedup_window_ms].
    #[arg(long)]
    dedup_window_ms: Option<Millis>,
    /// Memory (MiB) one DataFusion query may hold before spilling to disk, at least 64 [config:
    /// lake.memory_mb].
    #[arg(long, default_value_t = sellable_batch::DEFAULT_MEMORY_LIMIT >> 20, value_parser = memory_mb)]
    memory_mb: usize,
}

/// Parses `--memory-mb`.
fn memory_mb(text: &str) -> Result<usize, String> {
    let mb: usize = text.parse().map_err(|_| format!("not a whole number of MiB: '{text}'"))?;
    if (mb as u64) < sellable_batch::MIN_MEMORY_MB {
        return Err(format!("{mb} MiB is too little: DataFusion needs at least {}", sellable_batch::MIN_MEMORY_MB));
    }
    Ok(mb)
}

impl LakeArgs {
    fn open(&self) -> Result<Lake> {
        Ok(Lake::open(&self.lake)?.with_memory_limit(self.memory_mb << 20))
    }


    fn fold_config(&self) -> FoldConfig {
        FoldConfig { lateness_ms: self.lateness_ms, dedup_window_ms: self.dedup_window_ms }
    }
}

#[derive(Args)]
struct ImportArgs {
    #[command(flatten)]
    lake: LakeArgs,
    /// A `sellable gen` directory, or a Parquet / JSON Lines file of events.
    #[arg(long)]
    from: PathBuf,
}

#[derive(Args)]
struct BatchArgs {
    #[command(flatten)]
    lake: LakeArgs,
    /// Cutoff, RFC 3339 or milliseconds: the view holds the events that arrived at or before it
    /// [default: the latest arrival in the lake].
    #[arg(long, value_parser = parse_time, conflicts_with = "every_day")]
    asof: Option<Millis>,
    /// Backfill the features as of every midnight (UTC) from FROM to TO, both included:
    /// `2026-01-02..2026-01-07` or RFC 3339 / millisecond bounds. The batch view is left as is.
    #[arg(long, value_parser = parse_day_range)]
    every_day: Option<(Millis, Millis)>,
}

#[derive(Args)]
struct TrainsetArgs {
    #[command(flatten)]
    lake: LakeArgs,
    /// First order time (RFC 3339 or milliseconds), included.
    #[arg(long, value_parser = parse_time)]
    from: Millis,
    /// Last order time, excluded.
    #[arg(long, value_parser = parse_time)]
    to: Millis,
}

#[derive(Args)]
struct RedisArgs {
    /// Redis URL for the speed view; without it, the speed view is embedded in memory
    /// [config: redis.url, or REDIS_URL].
    #[arg(long)]
    redis: Option<String>,
    /// Key namespace in Redis [config: redis.namespace].
    #[arg(long, default_value = "sellable")]
    namespace: String,
}

#[derive(Args)]
struct FoldArgs {
    #[command(flatten)]
    lake: LakeArgs,
    #[command(flatten)]
    redis: RedisArgs,
    /// Fold this Parquet / JSON Lines file instead of the lake's events after the cutoff.
    #[arg(long, conflicts_with = "stream")]
    from: Option<PathBuf>,
    /// Consume this Redis Stream (entries written by `sellable publish`) instead.
    #[arg(long)]
    stream: Option<String>,
    /// Consumer group of the stream.
    #[arg(long, default_value = "sellable-fold")]
    group: String,
    /// Consumer name; a restarted worker with the same name resumes its unacknowledged entries.
    #[arg(long, default_value = "worker")]
    consumer: String,
    /// Concurrent consumers in this process (named CONSUMER-1 … CONSUMER-N).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Stream entries a worker reads at once (at most; fewer when fewer are waiting).
    #[arg(long, default_value_t = 4000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    batch: u64,
    /// Stop after the stream has had nothing new for this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    until_idle: Option<f64>,
}

#[derive(Args)]
struct ReconcileArgs {
    #[command(flatten)]
    lake: LakeArgs,
    /// The Redis holding the speed view [config: redis.url, or REDIS_URL].
    #[arg(long, default_value = config::LOCAL_REDIS)]
    redis: String,
    #[arg(long, default_value = "sellable")]
    namespace: String,
    /// Rewrite every drifted sku×node with the lake's value.
    #[arg(long)]
    repair: bool,
}

#[derive(Args)]
struct PublishArgs {
    #[arg(long, default_value = config::LOCAL_REDIS)]
    redis: String,
    #[arg(long)]
    stream: String,
    /// A Parquet / JSON Lines events file.
    #[arg(long)]
    from: PathBuf,
}

#[derive(Args)]
struct DeadlettersArgs {
    #[arg(long, default_value = config::LOCAL_REDIS)]
    redis: String,
    /// The stream whose dead letters to list (they are in STREAM:dead) [default: the events
    /// refused by `POST /v1/events` and `fold --from`, in NAMESPACE:dead].
    #[arg(long)]
    stream: Option<String>,
    #[arg(long, default_value = "sellable")]
    namespace: String,
    #[arg(long, default_value_t = 20)]
    count: usize,
}

#[derive(Args)]
struct RulesDirArgs {
    /// A directory of `*.rules` files, applied to every answer and reloaded when it changes
    /// [config: serve.rules].
    #[arg(long)]
    rules: Option<PathBuf>,
    #[command(flatten)]
    schema: SchemaArgs,
}

impl RulesDirArgs {
    fn book(&self) -> Result<Arc<RuleBook>> {
        Ok(Arc::new(match &self.rules {
            Some(dir) => RuleBook::from_dir(dir, self.schema.schema())?,
            None => RuleBook::empty(self.schema.schema()),
        }))
    }
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    lake: LakeArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    rules: RulesDirArgs,
    #[command(flatten)]
    models: ModelsDirArgs,
    /// Score this model version in shadow: logged beside the live score, never decides.
    #[arg(long)]
    shadow: Option<String>,
    /// Address of the REST API [config: serve.listen].
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

#[derive(Args)]
struct DemoArgs {
    /// Use this Redis for the speed view instead of the embedded store.
    #[arg(long)]
    redis: Option<String>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the generated files and the lake go (replaced on every run).
    #[arg(long, default_value = "demo-data")]
    dir: PathBuf,
    #[command(flatten)]
    rules: RulesDirArgs,
    #[command(flatten)]
    sim: SimArgs,
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

const DAY_MS: Millis = 86_400_000;

fn parse_time(text: &str) -> Result<Millis, String> {
    text.parse::<Millis>()
        .ok()
        .or_else(|| parse_rfc3339(text))
        .ok_or_else(|| format!("expected RFC 3339 (2026-01-07T00:00:00Z) or milliseconds, got '{text}'"))
}

fn main() {
    let cli = parse_cli();
    init_tracing(cli.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if let Err(error) = runtime.block_on(run(cli.command)) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

/// Parses the command line over the configuration: the file (`--config` before the command, or
/// `SELLABLE_CONFIG`) and the environment are merged into a [`Config`] (every problem printed,
/// exit 1), its values become the flags' defaults (so `--help` shows them too), and then the
/// command line is parsed. `demo` keeps the embedded defaults, and `backtest --rules` (rule
/// files, not the serving directory) is left alone.
fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let environment = std::env::vars_os().filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)));
    let config = Config::load(config_file().as_deref(), environment).unwrap_or_else(|problems| {
        for problem in &problems {
            eprintln!("config: {problem}");
        }
        eprintln!("config: {} problem(s); nothing was done", problems.len());
        std::process::exit(1);
    });
    let command = with_defaults(Cli::command(), &config.flag_defaults());
    Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|error| error.exit())
}

/// The `--config FILE` given before the command (a command's own `--config`, as `train`'s, is
/// another thing), else `SELLABLE_CONFIG`.
fn config_file() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(path.into());
        }
        if !text.starts_with('-') {
            break;
        }
    }
    std::env::var_os("SELLABLE_CONFIG").map(PathBuf::from)
}

fn with_defaults(mut command: clap::Command, defaults: &[(&'static str, String)]) -> clap::Command {
    for (id, value) in defaults {
        let skip = command.get_name() == "backtest" && *id == "rules";
        if !skip && command.get_arguments().any(|arg| arg.get_id() == *id) {
            // clap keeps defaults for the life of the program: leaked once, at startup
            let value: &'static str = Box::leak(value.clone().into_boxed_str());
            command = command.mut_arg(*id, |arg| arg.default_value(value));
        }
    }
    let subcommands: Vec<String> = command.get_subcommands().map(|sub| sub.get_name().to_string()).filter(|name| name != "demo").collect();
    for name in subcommands {
        command = command.mut_subcommand(name, |sub| with_defaults(sub, defaults));
    }
    command
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lance=warn,datafusion=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Gen(args) => {
            let config = sim_config(&args.sim, args.start.unwrap_or(sellable_bench::simulator::DEFAULT_START));
            gen(&config, &args.out)?;
            Ok(())
        }
        Command::Lake(LakeCommand::Import(args)) => import(&args.lake.open()?, &args.from).await,
        Command::Lake(LakeCommand::Info(args)) => lake_info(&args.open()?).await,
        Command::Batch(args) => {
            let lake = args.lake.open()?;
            if let Some((from, to)) = args.every_day {
                let cutoffs: Vec<Millis> = (from..=to).step_by(DAY_MS as usize).collect();
                return features(&lake, &cutoffs, args.lake.fold_config()).await;
            }
            let asof = match args.asof {
                Some(asof) => asof,
                None => lake.last_arrival().await?.context("the lake has no events: nothing to compute")?,
            };
            batch(&lake, asof, args.lake.fold_config()).await
        }
        Command::Trainset(args) => trainset(&args.lake.open()?, &args).await,
        Command::Fold(args) => {
            let Some(url) = &args.redis.redis else {
                bail!("fold needs --redis URL (or REDIS_URL): an embedded speed view lives only inside `sellable serve`")
            };
            let speed = SpeedView::redis(url, &args.redis.namespace, args.lake.fold_config()).await?;
            if let Some(stream) = &args.stream {
                return fold_stream(url, speed, stream, &args).await;
            }
            let lake = args.lake.open()?;
            let cutoff = lake.load_batch_view().await?.asof;
            fold(&lake, &speed, cutoff, args.from.as_deref(), None).await?;
            Ok(())
        }
        Command::Serve(args) => {
            let lake = args.lake.open()?;
            let speed = open_speed(&lake, &args.redis, args.lake.fold_config()).await?;
            let models = model_book(&args.models.models, args.shadow.as_deref())?;
            let serving = load_serving(&lake, speed, args.rules.book()?, models).await?;
            serve(serving, args.listen, None).await
        }
        Command::Train(args) => train(&args).await,
        Command::Models(command) => models(command),
        Command::Backtest(args) => backtest(&args).await,
        Command::Rules(command) => rules(command).await,
        Command::Reconcile(args) => reconcile(args).await,
        Command::Publish(args) => {
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
        Command::Deadletters(args) => {
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
        Command::Demo(args) => demo(args).await,
    }
}

fn sim_config(args: &SimArgs, start: Millis) -> SimConfig {
    SimConfig {
        seed: args.seed,
        skus: args.skus,
        nodes: args.nodes,
        days: args.days,
        start,
        orders_per_sku_day: args.orders_per_sku_day,
        show_progress: true,
    }
}

fn gen(config: &SimConfig, out: &Path) -> Result<sellable_bench::SimSummary> {
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

async fn import(lake: &Lake, from: &Path) -> Result<()> {
    let events_file = if from.is_dir() {
        let paths = sellable_bench::SimPaths::in_dir(from);
        use sellable_core::catalog::{nodes_from_batch, read_parquet, skus_from_batch};
        let skus = read_parquet(&paths.skus, skus_from_batch).with_context(|| format!("reading {}", paths.skus.display()))?;
        let nodes = read_parquet(&paths.nodes, nodes_from_batch).with_context(|| format!("reading {}", paths.nodes.display()))?;
        lake.import_catalog(&skus, &nodes).await.context("importing the catalog")?;
        eprintln!("import: catalog of {} skus and {} nodes", skus.len(), nodes.len());
        paths.events
    } else {
        from.to_path_buf()
    };
    let events = read_event_file(&events_file).with_context(|| format!("reading {}", events_file.display()))?;
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
    Ok(())
}

async fn lake_info(lake: &Lake) -> Result<()> {
    let infos = lake.info().await?;
    if infos.is_empty() {
        println!("the lake at {} is empty: sellable lake import --from DIR|FILE", lake.root().display());
    }
    println!("{:<12} {:>8} {:>9} {:>12} {:>10}  time range", "dataset", "version", "versions", "rows", "size");
    for info in infos {
        let range = info.range.map_or(String::new(), |(first, last)| format!("{} .. {}", format_millis(first), format_millis(last)));
        let size = format!("{:.1} MiB", info.bytes as f64 / (1 << 20) as f64);
        println!("{:<12} {:>8} {:>9} {:>12} {:>10}  {range}", info.name, info.version, info.versions, info.rows, size);
    }
    Ok(())
}

async fn features(lake: &Lake, cutoffs: &[Millis], config: FoldConfig) -> Result<()> {
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

async fn trainset(lake: &Lake, args: &TrainsetArgs) -> Result<()> {
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

/// Trains on the latest training set, evaluates, and registers a new version.
async fn train(args: &TrainArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            TrainConfig::from_toml(&text, &path.display().to_string()).map_err(anyhow::Error::msg)?
        }
        None => TrainConfig::default(),
    };
    let lake = args.lake.open()?;
    let registry = Registry::open(&args.models.models)?;
    let (rows, lineage) = lake.load_trainset().await.context("loading the training set")?;
    let lineage = lineage.context("the training set is empty: build one over a longer period (sellable trainset)")?;
    let trainset_version = lake.trainset_version().await?;
    let names = sellable_core::features::names();
    let mut orders = sellable_models::Orders::new(&names)?;
    for row in &rows {
        orders.push(row.ts, &row.features, row.label).with_context(|| format!("training set row of order {}", row.order_id))?;
    }
    eprintln!("train: {} orders ({} shorted) from training set version {trainset_version}", orders.len(), orders.positives());
    let started = std::time::Instant::now();
    let bar = Progress::stderr().bar("boosting rounds", config.xgboost.rounds as u64);
    let fitted = sellable_models::fit(&orders, &config, |round| {
        bar.set_position(round.round as u64 + 1);
        bar.set_message(format!("validation log loss {:.5}, best round {}", round.validation_log_loss, round.best_round + 1));
    })?;
    bar.finish();
    let code_version = format!("sellable {} models", env!("CARGO_PKG_VERSION"));
    let model_lineage = ModelLineage {
        trainset_version,
        lake_version: lineage.lake_version,
        features_version: lineage.features_version,
        trainset_code_version: lineage.code_version,
        code_version: code_version.clone(),
    };
    let names: Vec<String> = names.iter().map(ToString::to_string).collect();
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let manifest = fitted.manifest(&names, model_lineage.clone(), created);
    let details = [
        ("training set".to_string(), format!("version {trainset_version}: {} orders", orders.len())),
        ("lineage".to_string(), format!("events v{}, features v{}, {}", model_lineage.lake_version, model_lineage.features_version, model_lineage.trainset_code_version)),
        ("model".to_string(), format!("{} rounds, positive weight {:.2}, {code_version}", fitted.model.rounds, fitted.model.positive_weight)),
        ("parity with XGBoost".to_string(), format!("largest difference {:.1e}", fitted.parity)),
    ];
    let report = sellable_models::report::html("sellable p_fulfill model", &details, &fitted.evaluation).map_err(anyhow::Error::msg)?;
    let version = registry.register(fitted.model.json(), manifest, &fitted.metrics_json(), &report)?;
    let e = &fitted.evaluation;
    let compared = &e.at_safety_stock_false_deny_rate;
    eprintln!(
        "train: {version} in {:.1} s: {} rounds; held-out days: PR-AUC {:.3} (no skill {:.3}), log loss {:.4}, calibration error {:.4}\n  \
         threshold {:.4} (target oversell rate {}): oversell rate {:.4}, false-deny rate {:.4} (naive ATP {:.4} / {:.4}, safety stock k={} {:.4} / {:.4})\n  \
         at the safety stock's false-deny rate ({:.4}): {} oversells vs {} (ratio {:.2})\n  report: {}",
        started.elapsed().as_secs_f64(),
        fitted.model.rounds,
        e.pr_auc,
        e.short_rate,
        e.log_loss,
        e.calibration_error,
        e.threshold,
        e.target_oversell_rate,
        e.model.oversell_rate,
        e.model.false_deny_rate,
        e.naive_atp.oversell_rate,
        e.naive_atp.false_deny_rate,
        e.safety_stock,
        e.static_safety_stock.oversell_rate,
        e.static_safety_stock.false_deny_rate,
        compared.false_deny_rate,
        compared.model_oversells,
        compared.safety_stock_oversells,
        compared.ratio,
        registry.file(&version, "report.html")?.display()
    );
    if args.promote {
        registry.promote(&version, &sellable_core::features::names())?;
        eprintln!("train: {version} is live");
    } else {
        eprintln!("train: make it live with `sellable models promote {version} --models {}`", args.models.models.display());
    }
    Ok(())
}

fn models(command: ModelsCommand) -> Result<()> {
    let features = sellable_core::features::names();
    match command {
        ModelsCommand::List(args) => {
            let registry = Registry::open(&args.models)?;
            let live = registry.live()?;
            let versions = registry.versions()?;
            if versions.is_empty() {
                println!("no model in {}: train one (sellable train)", args.models.display());
            }
            for version in versions {
                let mark = if live.as_deref() == Some(version.as_str()) { "*" } else { " " };
                match registry.manifest(&version) {
                    Ok(m) => println!(
                        "{mark} {version:<5} {}  {:>4} rounds  threshold {:.4}  PR-AUC {:.3}  oversells vs safety stock {:.2}",
                        m.created,
                        m.rounds,
                        m.threshold,
                        m.headline.get("pr_auc").copied().unwrap_or(f64::NAN),
                        m.headline.get("oversells_vs_safety_stock").copied().unwrap_or(f64::NAN)
                    ),
                    Err(error) => println!("{mark} {version:<5} unreadable: {error}"),
                }
            }
            Ok(())
        }
        ModelsCommand::Show(args) => {
            let registry = Registry::open(&args.dir.models)?;
            let manifest = registry.manifest(&args.version)?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
            println!("report: {}", registry.file(&args.version, "report.html")?.display());
            Ok(())
        }
        ModelsCommand::Promote(args) => {
            let registry = Registry::open(&args.dir.models)?;
            let model = registry.promote(&args.version, &features).with_context(|| format!("promoting {}", args.version))?;
            println!("{} is live (threshold {:.4}); a running server picks it up within a second", model.version(), model.threshold());
            Ok(())
        }
        ModelsCommand::Rollback(args) => {
            let registry = Registry::open(&args.models)?;
            let model = registry.rollback(&features).context("rolling back")?;
            println!("rolled back: {} is live again (threshold {:.4})", model.version(), model.threshold());
            Ok(())
        }
    }
}

/// Decides every order of a past period as the engine would have, and writes the CSV and summary.
async fn backtest(args: &BacktestArgs) -> Result<()> {
    let lake = args.lake.open()?;
    let registry = Registry::open(&args.models.models)?;
    let features = sellable_core::features::names();
    let version = match args.model.as_deref() {
        Some("none") => None,
        Some(version) => Some(version.to_string()),
        None => Some(registry.live()?.context("no model is live: pass --model V, or --model none for rules on naive ATP")?),
    };
    let model = version.as_deref().map(|version| registry.load(version, &features)).transpose()?;
    let safety_stock = model.as_ref().and_then(|m| m.manifest.headline.get("safety_stock")).map_or(0, |k| *k as i64);
    let schema = args.schema.schema();
    let rules = if args.rules.is_empty() {
        RuleBook::empty(schema)
    } else {
        let sources = rule_sources(&args.rules)?;
        let loaded = sellable_dsl::load(&sources, &schema);
        for diagnostic in &loaded.diagnostics {
            eprintln!("{diagnostic}\n");
        }
        RuleBook::with(loaded.ruleset.context("the rule files have errors: nothing was backtested")?, schema)
    };
    let (rows, _, summary) = lake.build_trainset(args.from, args.to, args.lake.fold_config(), &Progress::stderr()).await.context("replaying the period")?;
    let (skus, nodes) = lake.load_catalog().await.context("loading the catalog")?;
    let empty = Arc::new(SpeedView::memory(args.lake.fold_config()));
    let serving = Serving::new(skus, nodes, sellable_core::BatchView::default(), empty, Arc::new(rules));
    let (decisions, result) = serving.backtest(model.as_ref(), &rows, safety_stock).map_err(anyhow::Error::msg)?;
    let file = std::fs::File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    sellable_serving::backtest::write_csv(&decisions, std::io::BufWriter::new(file)).map_err(anyhow::Error::msg)?;
    let summary_path = args.out.with_extension("summary.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&result)?).with_context(|| format!("writing {}", summary_path.display()))?;
    let line = |name: &str, counts: &sellable_serving::backtest::PolicyCounts| {
        eprintln!(
            "  {name:<28} promised {:>7}  oversells {:>6}  oversells caught {:>6}  wrongly denied {:>6}",
            counts.promised, counts.oversells, counts.oversells_caught, counts.wrongly_denied
        )
    };
    eprintln!(
        "backtest: {} orders ({} shorted; {} left out: before the first feature cutoff, released or open) with model {} and {} rule(s)",
        result.orders,
        result.shorted,
        summary.before_first_cutoff + summary.released + summary.no_outcome_yet,
        version.as_deref().unwrap_or("none"),
        serving.rules.current().map_or(0, |r| r.len())
    );
    line("engine (model + rules)", &result.engine);
    line("naive ATP", &result.naive_atp);
    line(&format!("static safety stock k={safety_stock}"), &result.static_safety_stock);
    eprintln!("  -> {} and {}", args.out.display(), summary_path.display());
    Ok(())
}

/// The nightly job: batch view and features as of `asof`.
async fn batch(lake: &Lake, asof: Millis, config: FoldConfig) -> Result<()> {
    let started = std::time::Instant::now();
    let (view, features) = lake
        .nightly(asof, config, &Progress::stderr())
        .await
        .with_context(|| format!("computing the batch view and features as of {}", format_millis(asof)))?;
    eprintln!(
        "batch: view as of {} of {} sku×nodes ({} on-hand deltas after their last count), {} feature rows, in {:.1} s \
         ({} {} of the nodes) -> batch_view version {}, features version {}",
        format_millis(view.asof),
        view.sku_nodes,
        view.deltas,
        features.rows,
        started.elapsed().as_secs_f64(),
        view.shares,
        if view.shares == 1 { "share" } else { "shares" },
        view.version,
        features.version
    );
    Ok(())
}

/// Folds the events after `cutoff` (from the lake, or from a file) into the speed view; those
/// arriving after `until`, if given, are returned instead: they have not arrived yet.
async fn fold(
    lake: &Lake,
    speed: &SpeedView,
    cutoff: Millis,
    from: Option<&Path>,
    until: Option<Millis>,
) -> Result<Vec<sellable_core::Event>> {
    let started = std::time::Instant::now();
    // Events in the batch view that a redelivery could still bring within the allowed lateness:
    // remembered, so the copy is a duplicate. Anything older would be rejected as too late.
    let lateness = speed.config().lateness_ms;
    let ids = lake.event_ids_arrived(cutoff - lateness, cutoff).await.context("reading recent event ids")?;
    speed.remember(&ids, cutoff).await.context("remembering the batch view's recent event ids")?;
    let (source, mut decoded): (String, Vec<_>) = match from {
        Some(path) => (
            path.display().to_string(),
            read_event_file(path).with_context(|| format!("reading {}", path.display()))?.collect(),
        ),
        None => ("the lake".to_string(), lake.events_after(cutoff).await.context("reading events after the cutoff")?),
    };
    let mut later = Vec::new();
    if let Some(until) = until {
        decoded.retain(|event| match event {
            Ok(event) if event.arrival() > until => {
                later.push(event.clone());
                false
            }
            _ => true,
        });
    }
    let total = decoded.len();
    let label = from.map_or("lake".to_string(), |path| format!("file:{}", path.display()));
    let report = speed.fold_decoded(decoded, Some(cutoff), &label).await.context("folding into the speed view")?;
    for error in report.rejected.iter().take(20) {
        eprintln!("fold: rejected {source}: {error}");
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = report.stats;
    eprintln!(
        "fold: {total} events from {source} after {} into the {} speed view: {} applied, {} duplicates, {} too late, \
         {} expired, {} before the cutoff, {} malformed in {seconds:.1} s ({:.0} events/s)",
        format_millis(cutoff),
        speed.describe(),
        stats.applied,
        stats.duplicates,
        stats.too_late,
        stats.expired,
        report.before_cutoff,
        report.rejected.len(),
        total as f64 / seconds.max(1e-9)
    );
    Ok(later)
}

/// Compares the live speed view with the truth of the lake: the fold of the events that arrived
/// after the cutoff, knowing the batch view's recent ids (exactly what `fold` does).
async fn reconcile(args: ReconcileArgs) -> Result<()> {
    let lake = args.lake.open()?;
    let config = args.lake.fold_config();
    let live = SpeedView::redis(&args.redis, &args.namespace, config).await?;
    let cutoff = lake.load_batch_view().await?.asof;
    let truth = SpeedView::memory(config);
    fold(&lake, &truth, cutoff, None, None).await?;
    let (skus, _) = lake.load_catalog().await?;
    let mut drifted = 0;
    for sku in skus.iter().map(|s| s.sku.as_str()) {
        let live_states = live.sku_states(sku).await?;
        let true_states = truth.sku_states(sku).await?;
        let mut nodes: Vec<&str> = live_states.iter().chain(&true_states).map(|(node, _)| node.as_str()).collect();
        nodes.sort();
        nodes.dedup();
        for node in nodes {
            let find = |states: &[(String, sellable_core::NodeState)]| states.iter().find(|(n, _)| n == node).map(|(_, s)| s.clone());
            let (live_state, true_state) = (find(&live_states), find(&true_states));
            if live_state == true_state {
                continue;
            }
            drifted += 1;
            let show = |state: &Option<sellable_core::NodeState>| match state {
                Some(s) => format!("on_hand {} reserved {} held {} atp {}", s.on_hand(), s.reserved, s.held, s.atp()),
                None => "nothing".to_string(),
            };
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

/// Runs `--workers` consumers of the stream's group until Ctrl-C or `--until-idle`.
async fn fold_stream(url: &str, speed: SpeedView, stream: &str, args: &FoldArgs) -> Result<()> {
    if let Some(hazard) = sellable_speed::persistence_hazard(url).await {
        tracing::warn!("{hazard}");
    }
    let speed = Arc::new(speed);
    let started = std::time::Instant::now();
    let idle_limit = args.until_idle.map(std::time::Duration::from_secs_f64);
    let mut workers = Vec::new();
    for index in 1..=args.workers.max(1) {
        let consumer = if args.workers > 1 { format!("{}-{index}", args.consumer) } else { args.consumer.clone() };
        let mut config = sellable_speed::stream::StreamConfig::new(stream, &args.group, &consumer);
        config.batch = args.batch as usize;
        let (speed, url) = (speed.clone(), url.to_string());
        workers.push(tokio::spawn(async move {
            let mut worker = sellable_speed::stream::StreamWorker::connect(&url, config, &speed).await?;
            let mut idle_since = std::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    handled = worker.step() => match handled {
                        Ok(0) => {
                            if idle_limit.is_some_and(|limit| idle_since.elapsed() >= limit) {
                                break;
                            }
                        }
                        Ok(_) => idle_since = std::time::Instant::now(),
                        // Redis away (restarting, failing over): say so, wait, go on.
                        Err(error) => {
                            tracing::warn!(%error, "stream read failed; retrying");
                            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        }
                    }
                }
            }
            // when this worker last did work: the rate leaves out the final idle wait
            Ok::<_, sellable_speed::SpeedError>((worker.stats, idle_since))
        }));
    }
    let mut total = sellable_speed::stream::StreamStats::default();
    let mut last_work = started;
    for worker in workers {
        let (stats, idle_since) = worker.await.context("a fold worker panicked; this is a bug")??;
        last_work = last_work.max(idle_since);
        total.entries += stats.entries;
        total.fold.add(stats.fold);
        total.dead_lettered += stats.dead_lettered;
    }
    let seconds = (last_work - started).as_secs_f64();
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

/// Folds events as their arrival time comes, like a live stream: the demo's last events are
/// still in flight when it starts (seller feeds lag, some scans are stuck for days).
fn spawn_live_feed(speed: Arc<SpeedView>, events: Vec<sellable_core::Event>) {
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

/// The speed view to serve from: Redis as it is, or an embedded one that starts empty and
/// folds what arrived after the cutoff.
async fn open_speed(lake: &Lake, redis: &RedisArgs, config: FoldConfig) -> Result<Arc<SpeedView>> {
    match &redis.redis {
        Some(url) => Ok(Arc::new(SpeedView::redis(url, &redis.namespace, config).await?)),
        None => {
            let speed = SpeedView::memory(config);
            let cutoff = lake.load_batch_view().await?.asof;
            fold(lake, &speed, cutoff, None, None).await?;
            Ok(Arc::new(speed))
        }
    }
}

/// The model registry's live version for serving, watched for promotions and rollbacks.
fn model_book(dir: &Path, shadow: Option<&str>) -> Result<Arc<ModelBook>> {
    let registry = Registry::open(dir)?;
    let book = Arc::new(ModelBook::from_registry(registry, shadow).map_err(anyhow::Error::msg)?);
    match book.status() {
        ModelStatus { live: Some(live), .. } => eprintln!("serve: model {live} live from {}", dir.display()),
        ModelStatus { error: Some(error), .. } => eprintln!("serve: no model live ({error}): answers are degraded to naive ATP and rules"),
        _ => eprintln!("serve: no model promoted in {}: answers are degraded to naive ATP and rules", dir.display()),
    }
    Ok(book)
}

async fn load_serving(lake: &Lake, speed: Arc<SpeedView>, rules: Arc<RuleBook>, models: Arc<ModelBook>) -> Result<Arc<Serving>> {
    let (skus, nodes) = lake.load_catalog().await.context("loading the catalog")?;
    let batch = lake.load_batch_view().await.context("loading the batch view")?;
    if rules.dir().is_some() {
        rules.clone().watch(std::time::Duration::from_secs(1));
    }
    models.clone().watch(std::time::Duration::from_millis(500));
    let serving = Arc::new(Serving::new(skus, nodes, batch, speed, rules).with_models(models));
    // before the first answer, not a second later: the batch view alone looks a day old
    serving.refresh_watermarks().await.map_err(|error| anyhow::anyhow!("reading the speed view's watermarks: {error}"))?;
    Ok(serving)
}

/// Reads rule files, expanding directories into their `*.rules` files.
fn rule_sources(paths: &[PathBuf]) -> Result<Vec<sellable_dsl::Source>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "rules"))
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(path.clone());
        }
    }
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok(sellable_dsl::Source { name: path.display().to_string(), text })
        })
        .collect()
}

async fn rules(command: RulesCommand) -> Result<()> {
    let (files, schema) = match &command {
        RulesCommand::Check(args) | RulesCommand::Test(args) => (&args.files, args.schema.schema()),
        RulesCommand::Explain(args) => (&args.files.files, args.files.schema.schema()),
    };
    let sources = rule_sources(files)?;
    let loaded = sellable_dsl::load(&sources, &schema);
    for diagnostic in &loaded.diagnostics {
        eprintln!("{diagnostic}\n");
    }
    let errors = loaded.errors().count();
    let warnings = loaded.diagnostics.len() - errors;
    let Some(ruleset) = loaded.ruleset else {
        bail!("{errors} error(s), {warnings} warning(s) in {} file(s): nothing loaded", sources.len());
    };
    match command {
        RulesCommand::Check(_) => {
            println!("ok: {} rule(s), {} test(s) in {} file(s), {warnings} warning(s)", ruleset.len(), ruleset.tests.len(), sources.len());
            Ok(())
        }
        RulesCommand::Test(_) => {
            let results = ruleset.run_tests();
            let failed = results.iter().filter(|r| !r.passed()).count();
            for result in &results {
                if result.passed() {
                    println!("PASS {}:{} {}", result.file, result.line, result.name);
                } else {
                    println!("FAIL {}:{} {}: {}", result.file, result.line, result.name, result.failures.join("; "));
                }
            }
            println!("{} passed, {failed} failed", results.len() - failed);
            if failed > 0 {
                bail!("{failed} rule test(s) failed");
            }
            Ok(())
        }
        RulesCommand::Explain(args) => {
            let lake = args.lake.open()?;
            let speed = open_speed(&lake, &args.redis, args.lake.fold_config()).await?;
            let serving = load_serving(&lake, speed, Arc::new(RuleBook::with(ruleset, schema)), model_book(&args.models.models, None)?).await?;
            let now = chrono::Utc::now().timestamp_millis();
            let answer = serving.availability(&args.sku, &args.region, args.qty, now).await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
    }
}

async fn serve(serving: Arc<Serving>, listen: SocketAddr, example: Option<String>) -> Result<()> {
    // Node watermarks (how far behind each feed is) refresh every second.
    let refresher = serving.clone();
    tokio::spawn(async move {
        loop {
            if let Err(error) = refresher.refresh_watermarks().await {
                tracing::warn!(%error, "could not read the speed view's watermarks");
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    eprintln!("serve: listening on http://{address} ({})", serving.batch.version);
    if let Some(path) = example {
        eprintln!("\n  curl -s 'http://{address}{path}'\n\nCtrl-C stops.");
    }
    axum::serve(listener, serving.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("serve: stopping");
        })
        .await
        .context("serving")
}

async fn demo(args: DemoArgs) -> Result<()> {
    // Events end about now, so freshness figures in answers mean something.
    let now = chrono::Utc::now().timestamp_millis();
    let days_ms = (args.sim.days * 86_400_000.0) as Millis;
    let start = (now - days_ms) / 60_000 * 60_000;
    let config = sim_config(&args.sim, start);
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir).with_context(|| format!("clearing {}", args.dir.display()))?;
    }
    let generated = args.dir.join("generated");
    let summary = gen(&config, &generated)?;
    let lake = Lake::open(&args.dir.join("lake"))?;
    import(&lake, &generated).await?;
    // The batch view stops a day before the end; the speed view holds the last day.
    let fold_config = FoldConfig::default();
    let cutoff = summary.end - 86_400_000.min(days_ms / 2);
    batch(&lake, cutoff, fold_config).await?;
    let speed = match &args.redis {
        Some(url) => {
            let speed = SpeedView::redis(url, "sellable-demo", fold_config).await?;
            speed.clear().await.context("clearing the demo namespace in Redis")?;
            speed
        }
        None => SpeedView::memory(fold_config),
    };
    let in_flight = fold(&lake, &speed, cutoff, None, Some(now)).await?;
    let speed = Arc::new(speed);
    if !in_flight.is_empty() {
        eprintln!("demo: {} events are still in flight; each is folded when its arrival time comes", in_flight.len());
        spawn_live_feed(speed.clone(), in_flight);
    }
    let models = model_book(&demo_model(&lake, &args.dir.join("models"), start, cutoff, fold_config).await, None)?;
    let serving = load_serving(&lake, speed, args.rules.book()?, models).await?;
    let example = example_request(&serving).await;
    serve(serving, args.listen, example).await
}

/// The demo's model: features as of every midnight before the cutoff, a training set of the
/// orders from the first midnight to the cutoff, XGBoost, promoted. Returns the registry
/// directory; if training fails (too few days, say), serving runs degraded and says why.
async fn demo_model(lake: &Lake, dir: &Path, start: Millis, cutoff: Millis, config: FoldConfig) -> PathBuf {
    let first = start - start.rem_euclid(DAY_MS) + DAY_MS;
    let midnights: Vec<Millis> = (first..cutoff).step_by(DAY_MS as usize).collect();
    let trained = async {
        lake.compute_features(&midnights, config, &Progress::stderr()).await.context("computing the daily features")?;
        let (rows, lineage, summary) = lake.build_trainset(first, cutoff, config, &Progress::stderr()).await.context("building the training set")?;
        lake.write_trainset(&rows, &lineage).await.context("writing the training set")?;
        eprintln!("demo: training set of {} orders ({} shorted)", summary.rows, summary.positives);
        let args = TrainArgs {
            lake: LakeArgs {
                lake: lake.root().to_path_buf(),
                lateness_ms: config.lateness_ms,
                dedup_window_ms: config.dedup_window_ms,
                memory_mb: config::LakeConfig::default().memory_mb,
            },
            models: ModelsDirArgs { models: dir.to_path_buf() },
            config: None,
            promote: true,
        };
        train(&args).await
    };
    if let Err(error) = trained.await {
        eprintln!("demo: no model ({error:#}); answers will be degraded to naive ATP and rules");
    }
    dir.to_path_buf()
}

/// A request worth pasting: the most popular SKU that can be promised now, in the country of
/// one of its nodes; failing that (rules may deny everything), the most popular SKU anywhere.
async fn example_request(serving: &Serving) -> Option<String> {
    let now = serving.now();
    let mut skus: Vec<&String> = serving.skus.keys().collect();
    skus.sort();
    let mut first = None;
    for sku in skus.into_iter().take(500) {
        let countries: Vec<&str> =
            serving.batch.sku_states(sku).filter_map(|(node, _)| Some(serving.nodes.get(node)?.country.as_str())).collect();
        for country in countries {
            let request = format!("/v1/availability/{sku}?region={country}&qty=1");
            if serving.availability(sku, country, 1, now).await.is_ok_and(|answer| answer.units > 0) {
                return Some(request);
            }
            first.get_or_insert(request);
        }
    }
    first
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_below_what_datafusion_needs_is_refused_with_the_reason() {
        assert_eq!(super::memory_mb("64"), Ok(64));
        assert_eq!(super::memory_mb("32"), Err("32 MiB is too little: DataFusion needs at least 64".to_string()));
        assert!(super::memory_mb("lots").unwrap_err().contains("'lots'"));
    }
}
