//! `sellable train`, `sellable models` and `sellable backtest`: the model from training set to
//! registry, and replays of past periods.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use sellable_batch::{Lake, Progress};
use sellable_models::{Registered, Registry, TrainConfig, TrainJob};
use sellable_serving::backtest::Backtest;
use sellable_serving::{ModelBook, RuleBook, Serving};
use sellable_speed::SpeedView;

use crate::cli::{BacktestArgs, ModelsCommand, TrainArgs};

pub async fn train(args: &TrainArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            TrainConfig::from_toml(&text, &path.display().to_string())?
        }
        None => TrainConfig::default(),
    };
    let registered = train_job(&args.lake.open()?, &args.models.models, &config, args.promote).await?;
    if !args.promote {
        eprintln!("train: make it live with `sellable models promote {} --models {}`", registered.version, args.models.models.display());
    }
    Ok(())
}

/// Trains on the lake's latest training set, evaluates, registers a new version in `models`
/// (live with `promote`), and says how it did: what `train` and the demo run.
pub async fn train_job(lake: &Lake, models: &Path, config: &TrainConfig, promote: bool) -> Result<Registered> {
    let registry = Registry::open(models)?;
    let set = lake.load_trainset().await.context("loading the training set")?;
    let job = TrainJob { set: &set, config, code_version: format!("sellable {} models", env!("CARGO_PKG_VERSION")) };
    eprintln!("train: {} orders from training set version {}", set.rows.len(), set.version);
    let started = std::time::Instant::now();
    let bar = Progress::stderr().bar("boosting rounds", config.xgboost.rounds as u64);
    let registered = job.run(&registry, promote, |round| {
        bar.set_position(round.round as u64 + 1);
        bar.set_message(format!("validation log loss {:.5}, best round {}", round.validation_log_loss, round.best_round + 1));
    })?;
    bar.finish();
    let (version, e) = (&registered.version, &registered.fitted.evaluation);
    let (fd, os) = (&e.at_matched_false_denies, &e.at_matched_oversells);
    eprintln!(
        "train: {version} in {:.1} s from {} orders ({} shorted): {} rounds; held-out days: PR-AUC {:.3} (no skill {:.3}), log loss {:.4}, \
         calibration error {:.4}\n  threshold {:.4} (target oversell rate {:.4}): oversell rate {:.4}, false-deny rate {:.4} (naive ATP {:.4} / {:.4}, \
         safety stock k={} {:.4} / {:.4})\n  beside safety stocks matched on the validation days: k={} denying no more, {} oversells vs {}; \
         k={} overselling no more, {} false denies vs {}\n  report: {}",
        started.elapsed().as_secs_f64(),
        registered.orders,
        registered.positives,
        registered.fitted.model.rounds,
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
        fd.safety_stock,
        fd.model_oversells,
        fd.safety_stock_oversells,
        os.safety_stock,
        os.model_false_denies,
        os.safety_stock_false_denies,
        registry.file(version, "report.html")?.display()
    );
    for warning in &e.warnings {
        eprintln!("train: WARNING: {warning}");
    }
    if promote {
        eprintln!("train: {version} is live");
    }
    Ok(registered)
}

pub fn registry(command: ModelsCommand) -> Result<()> {
    let features = sellable_core::features::names();
    match command {
        ModelsCommand::List(args) => list(&Registry::open(&args.models)?, &args.models),
        ModelsCommand::Show(args) => {
            let registry = Registry::open(&args.dir.models)?;
            println!("{}", serde_json::to_string_pretty(&registry.manifest(&args.version)?)?);
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
            let model = Registry::open(&args.models)?.rollback(&features).context("rolling back")?;
            println!("rolled back: {} is live again (threshold {:.4})", model.version(), model.threshold());
            Ok(())
        }
    }
}

fn list(registry: &Registry, dir: &Path) -> Result<()> {
    let live = registry.live()?;
    let versions = registry.versions()?;
    if versions.is_empty() {
        println!("no model in {}: train one (sellable train)", dir.display());
    }
    for version in versions {
        let mark = if live.as_deref() == Some(version.as_str()) { "*" } else { " " };
        match registry.manifest(&version) {
            Ok(m) => println!(
                "{mark} {version:<5} {}  {:>4} rounds  threshold {:.4}  PR-AUC {:.3}  oversells vs matched safety stock {:.2}",
                m.created,
                m.rounds,
                m.threshold,
                m.headline.get("pr_auc").copied().unwrap_or(f64::NAN),
                m.headline.get("oversells_vs_matched_safety_stock").copied().unwrap_or(f64::NAN)
            ),
            Err(error) => println!("{mark} {version:<5} unreadable: {error}"),
        }
    }
    Ok(())
}

/// Decides every order of a past period as the engine would have, and writes the CSV and summary.
pub async fn backtest(args: &BacktestArgs) -> Result<()> {
    let lake = args.lake.open()?;
    let registry = Registry::open(&args.models.models)?;
    // a version named on the command line; `none` for the rules on naive ATP
    let named = |arg: &str| (arg != "none").then(|| arg.to_string());
    let version = match args.model.as_deref() {
        Some(arg) => named(arg),
        None => Some(registry.live()?.context("no model is live: pass --model V, or --model none for rules on naive ATP")?),
    };
    let load_model = |version: Option<&str>| version.map(|version| registry.load(version, &sellable_core::features::names())).transpose();
    let model = load_model(version.as_deref())?;
    let safety_stock = model.as_ref().and_then(|m| m.manifest.headline.get("safety_stock")).map_or(0, |k| *k as i64);
    let schema = args.schema.schema();
    let rule_book = |paths: &[std::path::PathBuf]| -> Result<RuleBook> {
        if paths.is_empty() {
            return Ok(RuleBook::empty(schema.clone()));
        }
        let loaded = crate::commands::rules::load(paths, &schema)?;
        Ok(RuleBook::with(loaded.ruleset.context("the rule files have errors: nothing was backtested")?, schema.clone()))
    };
    let rules = rule_book(&args.rules)?;
    // the second configuration, if any, checked before the replay
    let other_version = args.compare_model.as_deref().map_or_else(|| version.clone(), named);
    let other = if args.compare_model.is_some() || !args.compare_rules.is_empty() {
        let rules = rule_book(if args.compare_rules.is_empty() { &args.rules } else { &args.compare_rules })?;
        Some((load_model(other_version.as_deref())?, rules))
    } else {
        None
    };
    let (skus, nodes) = lake.load_catalog().await.context("loading the catalog")?;
    let decider = |model: Option<sellable_models::Model>, rules: RuleBook| {
        let models = Arc::new(model.map_or_else(ModelBook::none, ModelBook::with));
        Serving::new(nodes.clone(), sellable_core::BatchMeta::default(), Arc::new(SpeedView::memory(args.lake.fold_config())), Arc::new(rules)).with_models(models)
    };
    let serving = decider(model, rules);
    let other = other.map(|(model, rules)| decider(model, rules));
    let skus = skus.into_iter().map(|info| (info.sku.clone(), info)).collect();
    // both configurations decide each order as the replay reaches it
    let (mut run, mut other_run) = (Backtest::new(safety_stock), Backtest::new(safety_stock));
    let mut failed = None;
    let summary = lake
        .replay_orders(args.from, args.to, args.lake.fold_config(), &Progress::stderr(), |order, moment| {
            if failed.is_some() {
                return;
            }
            let decided = match &other {
                Some(other) => other_run.decide(other, &skus, &order, moment.clone()).and_then(|()| run.decide(&serving, &skus, &order, moment)),
                None => run.decide(&serving, &skus, &order, moment),
            };
            failed = decided.err();
        })
        .await
        .context("replaying the period")?;
    if let Some(error) = failed {
        return Err(error).context("deciding the period's orders");
    }
    let (decisions, result) = (run.rows, run.summary);
    let file = std::fs::File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    sellable_serving::backtest::write_csv(&decisions, std::io::BufWriter::new(file))?;
    let summary_path = args.out.with_extension("summary.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&result)?).with_context(|| format!("writing {}", summary_path.display()))?;
    eprintln!(
        "backtest: {} orders ({} shorted; {} left out: before the first feature cutoff, released or open) with model {} and {} rule(s)",
        result.orders,
        result.shorted,
        summary.before_first_cutoff + summary.released + summary.no_outcome_yet,
        version.as_deref().unwrap_or("none"),
        serving.rules.current().map_or(0, |r| r.len())
    );
    let line = |name: &str, counts: &sellable_serving::backtest::PolicyCounts| {
        eprintln!(
            "  {name:<28} promised {:>7}  oversells {:>6}  oversells caught {:>6}  wrongly denied {:>6}",
            counts.promised, counts.oversells, counts.oversells_caught, counts.wrongly_denied
        )
    };
    line("engine (model + rules)", &result.engine);
    line("naive ATP", &result.naive_atp);
    line(&format!("static safety stock k={safety_stock}"), &result.static_safety_stock);
    eprintln!("  -> {} and {}", args.out.display(), summary_path.display());
    if let Some(other) = other {
        let (changed, change) = sellable_serving::backtest::compare(&decisions, &other_run.rows);
        let changes_path = args.out.with_extension("changes.csv");
        let file = std::fs::File::create(&changes_path).with_context(|| format!("creating {}", changes_path.display()))?;
        sellable_serving::backtest::write_changes_csv(&changed, std::io::BufWriter::new(file))?;
        println!(
            "compared with model {} and {} rule(s): {} order(s) decided otherwise ({} now denied, {} now promised); net oversells {:+}, net false denies {:+}",
            other_version.as_deref().unwrap_or("none"),
            other.rules.current().map_or(0, |r| r.len()),
            change.changed,
            change.now_denied,
            change.now_promised,
            change.net_oversells,
            change.net_false_denies
        );
        eprintln!("  -> {}", changes_path.display());
    }
    Ok(())
}
