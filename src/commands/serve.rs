//! `sellable serve`: the REST API over the lake's batch view and the speed view.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use sellable_batch::Lake;
use sellable_core::{EventIntake, FoldConfig};
use sellable_models::Registry;
use sellable_serving::decisions::{DecisionLog, DecisionLogConfig};
use sellable_serving::door::{DoorConfig, KeyEntry, Scope};
use sellable_serving::{Clock, ModelBook, ModelStatus, RuleBook, Serving};
use sellable_speed::{CatchUpSource, SpeedView};

use crate::cli::{RedisArgs, ServeArgs};
use crate::commands::speed::catch_up;

pub async fn run(args: &ServeArgs) -> Result<()> {
    let lake = Arc::new(args.lake.open()?);
    let speed = open_speed(&lake, &args.redis, args.lake.fold_config()).await?;
    let models = model_book(&args.models.models, args.shadow.as_deref())?;
    let mut writes = Writes::default();
    if let Some(url) = &args.redis.redis {
        if let Some(stream) = &args.ingest_stream {
            writes.intake = Some(Arc::new(sellable_speed::stream::StreamIntake::new(url, stream)?));
        }
        writes.holds = Some(Arc::new(sellable_speed::holds::RedisHolds::connect(url, &args.redis.namespace).await?));
    }
    writes.decisions = decision_log(&lake, &crate::config::loaded().serve.decisions)?;
    let serving = load_serving(&lake, speed, args.rules.book()?, models, writes).await?;
    let front = Front { analytics: args.flight.map(|address| (address, lake.clone())), ..Front::configured(args.listen) };
    serve(serving, front).await
}

/// The store to serve from, holding the lake's batch view (published into it) and the speed
/// view: an embedded one, filled at start with the batch view and what arrived after its cutoff,
/// or Redis, kept so from the lake by a task of its own (at start when it does not hold this
/// cutoff's, and whenever Redis comes back without it). Redis need not be up at start: answers
/// are conservative until it is.
pub async fn open_speed(lake: &Arc<Lake>, redis: &RedisArgs, config: FoldConfig) -> Result<Arc<SpeedView>> {
    let cutoff = crate::commands::speed::batch_cutoff(lake).await?;
    match &redis.redis {
        Some(url) => {
            let speed = Arc::new(SpeedView::redis_lazy(url, &redis.namespace, config).await?);
            sellable_speed::keep_caught_up(lake.clone(), speed.clone(), cutoff, batch_rows(lake.clone()), std::time::Duration::from_secs(1));
            Ok(speed)
        }
        None => {
            let speed = SpeedView::memory(config);
            let (meta, rows) = lake.load_published().await.context("loading the batch view")?;
            speed.publish(&meta, rows).await?;
            catch_up(lake, &speed, cutoff, CatchUpSource::Log, None).await?;
            Ok(Arc::new(speed))
        }
    }
}

/// The lake's batch view as [`sellable_speed::keep_caught_up`] publishes it again.
fn batch_rows(lake: Arc<Lake>) -> sellable_speed::BatchRows {
    Arc::new(move || {
        let lake = lake.clone();
        Box::pin(async move { Ok(lake.load_published().await?) })
    })
}

/// Where a server writes: the ingestion stream `POST /v1/events` appends to, the hold store of
/// reservations (without one, `POST /v1/reservations` answers 503), and the decision log.
#[derive(Default)]
pub struct Writes {
    pub intake: Option<Arc<dyn EventIntake>>,
    pub holds: Option<Arc<dyn sellable_core::holds::HoldStore>>,
    /// Where every answer is logged (the lake's `decisions`, through a local spill directory).
    pub decisions: Option<Arc<DecisionLog>>,
}

/// The decision log of `config` into `lake`'s `decisions`, its spill directory `config.spill` or
/// `decisions.spill` in the lake's local directory (the lake's own when it is local); none when it
/// is disabled.
pub fn decision_log(lake: &Arc<Lake>, config: &DecisionLogConfig) -> Result<Option<Arc<DecisionLog>>> {
    if !config.enabled {
        return Ok(None);
    }
    let spill = config.spill.clone().unwrap_or_else(|| {
        let spill = lake.local_dir().join("decisions.spill");
        if Lake::is_remote(lake.location()) {
            tracing::warn!(spill = %spill.display(), "the lake is remote: the decision log spills to temporary space; set serve.decisions.spill to a lasting directory");
        }
        spill
    });
    let log = DecisionLog::start(&spill, lake.clone(), config.clone()).with_context(|| format!("starting the decision log in {}", spill.display()))?;
    Ok(Some(log))
}

/// The model registry's live version for serving, watched for promotions and rollbacks.
pub fn model_book(dir: &Path, shadow: Option<&str>) -> Result<Arc<ModelBook>> {
    let book = Arc::new(ModelBook::from_registry(Registry::open(dir)?, shadow)?);
    let fallback = format!("answers hold back the static safety stock ({} unit(s) per node) and apply the rules", book.fallback_safety_stock());
    match book.status() {
        ModelStatus { live: Some(live), .. } => eprintln!("serve: model {live} live from {}", dir.display()),
        ModelStatus { error: Some(error), .. } => eprintln!("serve: no model live ({error}): {fallback}"),
        _ => eprintln!("serve: no model promoted in {}: {fallback}", dir.display()),
    }
    Ok(book)
}

pub async fn load_serving(
    lake: &Lake,
    speed: Arc<SpeedView>,
    rules: Arc<RuleBook>,
    models: Arc<ModelBook>,
    writes: Writes,
) -> Result<Arc<Serving>> {
    load_serving_with_clock(lake, speed, rules, models, writes, Clock::Wall).await
}

/// [`load_serving`] answering as of `clock`.
pub async fn load_serving_with_clock(
    lake: &Lake,
    speed: Arc<SpeedView>,
    rules: Arc<RuleBook>,
    models: Arc<ModelBook>,
    writes: Writes,
    clock: Clock,
) -> Result<Arc<Serving>> {
    let nodes = lake.load_nodes().await.context("loading the catalog's nodes")?;
    let batch = match speed.batch_meta().await {
        Ok(Some(batch)) if Some(batch.asof) == lake.batch_view_asof().await? => batch,
        // not published there yet (a namespace folded without it), or not reachable now: the
        // lake's, published if the store takes it (else the keeper above does, later)
        _ => {
            let (meta, rows) = lake.load_published().await.context("loading the batch view")?;
            if let Err(error) = speed.publish(&meta, rows).await {
                eprintln!("serve: could not publish the batch view into the speed view's store now ({error}); answers are conservative until it is");
            }
            meta
        }
    };
    if rules.dir().is_some() {
        rules.clone().watch(std::time::Duration::from_secs(1));
    }
    models.clone().watch(std::time::Duration::from_millis(500));
    let budgets = crate::config::loaded().serve.budgets.clone();
    let mut serving = Serving::new(nodes, batch, speed, rules).with_models(models).with_clock(clock).with_budgets(budgets);
    if let Some(intake) = writes.intake {
        serving = serving.with_intake(intake);
    }
    if let Some(holds) = writes.holds {
        serving = serving.with_holds(holds);
    }
    if let Some(decisions) = writes.decisions {
        serving = serving.with_decisions(decisions);
    }
    let serving = Arc::new(serving);
    // before the first answer, not a second later: the batch view alone looks a day old (a
    // speed view that cannot be read now is said in the answers)
    if let Err(error) = serving.refresh_watermarks().await {
        eprintln!("serve: the speed view cannot be read now ({error}): answers are conservative until it can");
    }
    Ok(serving)
}

/// Where and how the REST API is served.
pub struct Front {
    pub listen: SocketAddr,
    /// A request path shown as a `curl` line at start.
    pub example: Option<String>,
    /// The door (the configuration's `[serve]` for every command but `demo`).
    pub door: DoorConfig,
    /// Where Flight SQL is served over which lake, if it is (the door's keys admit its clients).
    pub analytics: Option<(SocketAddr, Arc<Lake>)>,
}

impl Front {
    /// On `listen`, behind the configuration's door, with no example.
    pub fn configured(listen: SocketAddr) -> Front {
        Front { listen, example: None, door: crate::config::loaded().serve.door(), analytics: None }
    }
}

/// Serves until Ctrl-C as `front` says. Without keys, the server makes one with every scope for
/// itself and prints it once.
pub async fn serve(serving: Arc<Serving>, front: Front) -> Result<()> {
    let Front { listen, example, mut door, analytics } = front;
    let mut made = None;
    if door.keys.is_empty() {
        let (key, entry) = KeyEntry::generate("local", Scope::ALL.to_vec());
        door.keys.push(entry);
        made = Some(key);
    }
    let door = Arc::new(serving.door(&door).map_err(|problems| anyhow::anyhow!("the [serve] configuration: {problems}"))?);
    // Node watermarks (how far behind each feed is) and the trust in the speed view refresh
    // every second.
    serving.clone().spawn_refresh(std::time::Duration::from_secs(1));
    let lanes = sellable_serving::door::lane_count(door.limits());
    let listeners = sellable_serving::door::bind_lanes(listen, lanes).with_context(|| format!("listening on {listen}"))?;
    let address = listeners[0].local_addr()?;
    eprintln!("serve: listening on http://{address} ({}; {lanes} lanes)", serving.epoch().batch.version);
    if let Some(key) = &made {
        eprintln!("serve: no API keys are configured, so this process made one with every scope, valid until it stops (`sellable keys new` makes lasting ones):\n\n  Authorization: Bearer {key}\n");
    }
    if let Some(path) = example {
        let header = made.as_ref().map(|key| format!(" -H 'Authorization: Bearer {key}'")).unwrap_or_default();
        eprintln!("\n  curl -s{header} 'http://{address}{path}'\n\nCtrl-C stops.");
    }
    let limits = door.limits().clone();
    let keys = door.config().keys.clone();
    let (stop_flight, flight_stopped) = tokio::sync::watch::channel(false);
    if let Some((address, lake)) = analytics {
        let listener = tokio::net::TcpListener::bind(address).await.with_context(|| format!("listening for Flight SQL on {address}"))?;
        eprintln!("serve: Flight SQL on grpc://{} (the same API keys, scope read)", listener.local_addr()?);
        let epochs = serving.clone();
        let live: sellable_analytics::live::LiveSource = Arc::new(move || epochs.epoch().speed.clone());
        let service = sellable_analytics::Analytics::new(lake, sellable_serving::door::KeyRing::new(&keys), &crate::config::loaded().serve.analytics).with_live(live);
        let mut stopped = flight_stopped.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.changed().await;
            };
            if let Err(error) = sellable_analytics::serve(service, listener, shutdown).await {
                eprintln!("serve: the Flight SQL server stopped: {error}");
            }
        });
    }
    let router = serving.clone().guarded(door);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("serve: stopping");
    };
    let served = sellable_serving::door::serve_lanes(listeners, router, &limits, shutdown).await.context("serving");
    let _ = stop_flight.send(true);
    // what the decision log holds goes to the lake, or stays in its spill directory for the next start
    if let Some(log) = serving.decisions() {
        log.close(std::time::Duration::from_secs(10)).await;
    }
    served
}
