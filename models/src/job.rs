//! The training job: a stored training set in, an evaluated model registered (and, if asked,
//! made live) out. `sellable train`, `sellable demo` and the tests run this one job.

use sellable_core::features::TrainingSet;

use crate::calibrate::Platt;
use crate::evaluate::{self, Ablation, Evaluation};
use crate::evaluator::Evaluator;
use crate::registry::{Manifest, ModelLineage};
use crate::train::Split;
use crate::{train, Orders, Registry, RegistryError, TrainConfig, TrainedModel};

/// Every failure of training.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("xgboost: {0}")]
    Xgboost(#[from] xgb::XGBError),
    #[error("training data: {0}")]
    Data(String),
    #[error("the training set is empty: build one over a longer period (sellable trainset)")]
    EmptyTrainingSet,
    #[error("training set row of order {order_id}: {source}")]
    Row { order_id: String, source: Box<ModelError> },
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}


/// Largest difference allowed between the evaluator's scores and XGBoost's own predictions.
pub const PARITY_TOLERANCE: f64 = 1e-6;

/// A trained and evaluated model, ready to register.
pub struct Fitted {
    pub model: TrainedModel,
    pub evaluation: Evaluation,
    /// Largest |evaluator − XGBoost| over the validation and test orders.
    pub parity: f64,
    /// The scores' calibration, fitted on the validation days (with `config.calibrate`).
    pub calibration: Option<Platt>,
    pub config: TrainConfig,
}

/// The whole training job on orders in time order: split by days, train with early stopping
/// (`on_round` sees each round), score the validation and held-out days with the pure-Rust
/// evaluator (checked against XGBoost's own predictions), pick the threshold, evaluate.
pub fn fit(orders: &Orders, config: &TrainConfig, on_round: impl FnMut(train::Round)) -> Result<Fitted, ModelError> {
    let split = orders.split(config.validation_days, config.test_days)?;
    let model = train::train(&split.train, &split.validation, config, on_round)?;
    let evaluator = Evaluator::from_json(model.json()).map_err(|error| ModelError::Data(format!("the trained model does not load: {error}")))?;
    let mut parity = 0.0f64;
    let mut p_fulfill = |set: &Orders| -> Result<Vec<f64>, ModelError> {
        let mut scores = Vec::with_capacity(set.len());
        evaluator.predict_batch(&set.features, &mut scores);
        let reference = model.predict(&set.features, set.len())?;
        parity = scores.iter().zip(&reference).map(|(a, b)| (a - b).abs() as f64).fold(parity, f64::max);
        Ok(scores.iter().map(|p| 1.0 - *p as f64).collect())
    };
    let (validation_p, test_p) = (p_fulfill(&split.validation)?, p_fulfill(&split.test)?);
    if parity > PARITY_TOLERANCE {
        return Err(ModelError::Data(format!("the evaluator differs from XGBoost by {parity:e} (allowed {PARITY_TOLERANCE:e}); this is a bug")));
    }
    let (calibration, validation_p, test_p) = calibrated(config, &split.validation, validation_p, test_p);
    let importance = train::importance(model.json(), &orders.names)?;
    let mut evaluation = evaluate::evaluate(&split.train, (&split.validation, &validation_p), (&split.test, &test_p), config.target(), importance);
    if config.ablation {
        evaluation.ablation.extend(ablation(&split, config, evaluation.target_oversell_rate)?);
    }
    Ok(Fitted { model, evaluation, parity, calibration, config: config.clone() })
}

/// With `config.calibrate`, the Platt scaling fitted on the validation days' scores and both
/// sets' `p_fulfill` mapped by it; else the scores as they are.
fn calibrated(config: &TrainConfig, validation: &Orders, validation_p: Vec<f64>, test_p: Vec<f64>) -> (Option<Platt>, Vec<f64>, Vec<f64>) {
    if !config.calibrate {
        return (None, validation_p, test_p);
    }
    let p_short: Vec<f64> = validation_p.iter().map(|p| 1.0 - p).collect();
    let platt = Platt::fit(&validation.labels, &p_short);
    let map = |scores: Vec<f64>| scores.into_iter().map(|p| 1.0 - platt.apply(1.0 - p)).collect();
    (Some(platt), map(validation_p), map(test_p))
}

/// The same training and evaluation without each group of [`evaluate::ABLATION_GROUPS`] in
/// turn (its features made missing everywhere), at thresholds chosen for `target` on the
/// validation days.
fn ablation(split: &Split, config: &TrainConfig, target: f64) -> Result<Vec<Ablation>, ModelError> {
    let names = &split.train.names;
    let mut rows = Vec::new();
    for (group, members) in evaluate::ABLATION_GROUPS {
        let columns: Vec<usize> = names.iter().enumerate().filter(|(_, name)| evaluate::in_group(name, members)).map(|(index, _)| index).collect();
        if columns.is_empty() {
            continue;
        }
        let without = |set: &Orders| {
            let mut set = set.clone();
            for row in set.features.chunks_mut(names.len()) {
                columns.iter().for_each(|column| row[*column] = f32::NAN);
            }
            set
        };
        let (train, validation, test) = (without(&split.train), without(&split.validation), without(&split.test));
        let model = train::train(&train, &validation, config, |_| {})?;
        let p_fulfill = |set: &Orders| -> Result<Vec<f64>, ModelError> { Ok(model.predict(&set.features, set.len())?.iter().map(|p| 1.0 - *p as f64).collect()) };
        let (_, validation_p, test_p) = calibrated(config, &validation, p_fulfill(&validation)?, p_fulfill(&test)?);
        rows.push(Ablation::of(group, columns.len(), (&validation, &validation_p), (&test, &test_p), target));
    }
    Ok(rows)
}

impl Fitted {
    /// The registry manifest of this model.
    pub fn manifest(&self, names: &[String], lineage: ModelLineage, created: String) -> Manifest {
        let e = &self.evaluation;
        let headline = [
            ("pr_auc", e.pr_auc),
            ("log_loss", e.log_loss),
            ("calibration_error", e.calibration_error),
            ("test_oversell_rate", e.model.oversell_rate),
            ("test_false_deny_rate", e.model.false_deny_rate),
            ("safety_stock", e.safety_stock as f64),
            ("oversells_vs_matched_safety_stock", e.at_matched_false_denies.model_oversells as f64 / e.at_matched_false_denies.safety_stock_oversells.max(1) as f64),
            ("false_denies_vs_matched_safety_stock", e.at_matched_oversells.model_false_denies as f64 / e.at_matched_oversells.safety_stock_false_denies.max(1) as f64),
            ("parity_max_difference", self.parity),
        ];
        Manifest {
            version: String::new(),
            created,
            features: names.to_vec(),
            threshold: e.threshold,
            target_oversell_rate: e.target_oversell_rate,
            rounds: self.model.rounds,
            lineage,
            headline: headline.into_iter().map(|(name, value)| (name.to_string(), value)).collect(),
            config: serde_json::to_value(&self.config).expect("the config serialises; this is a bug"),
            budgets: e.budgets.clone(),
            calibration: self.calibration,
        }
    }

    /// `metrics.json`: the evaluation, the parity check and the rounds.
    pub fn metrics_json(&self) -> String {
        let mut json = serde_json::to_value(&self.evaluation).expect("the evaluation serialises; this is a bug");
        json["parity_max_difference"] = serde_json::Value::from(self.parity);
        json["rounds"] = serde_json::Value::from(self.model.rounds);
        json["positive_weight"] = serde_json::Value::from(self.model.positive_weight);
        serde_json::to_string_pretty(&json).expect("JSON serialises")
    }
}

/// Training on one stored training set with one configuration.
pub struct TrainJob<'a> {
    pub set: &'a TrainingSet,
    pub config: &'a TrainConfig,
    /// Names the code that trains, in the manifest and the report.
    pub code_version: String,
}

/// What a training job registered.
pub struct Registered {
    pub version: String,
    pub fitted: Fitted,
    /// Orders trained and evaluated on, and how many of them were shorted.
    pub orders: usize,
    pub positives: usize,
    pub lineage: ModelLineage,
}

impl TrainJob<'_> {
    /// The orders of the training set, in the feature order of `core::features`.
    pub fn orders(&self) -> Result<Orders, ModelError> {
        let names = sellable_core::features::names();
        let mut orders = Orders::new(&names)?;
        for row in &self.set.rows {
            orders
                .push(row.ts, &row.features, row.label)
                .map_err(|source| ModelError::Row { order_id: row.order_id.clone(), source: Box::new(source) })?;
        }
        Ok(orders)
    }

    /// Trains (`on_round` sees every boosting round), evaluates, writes the report and registers
    /// a new version; with `promote`, makes it live.
    pub fn run(&self, registry: &Registry, promote: bool, on_round: impl FnMut(train::Round)) -> Result<Registered, ModelError> {
        let lineage = self.set.lineage.as_ref().ok_or(ModelError::EmptyTrainingSet)?;
        let orders = self.orders()?;
        let fitted = fit(&orders, self.config, on_round)?;
        let lineage = ModelLineage {
            trainset_version: self.set.version,
            lake_version: lineage.lake_version,
            features_version: lineage.features_version,
            trainset_code_version: lineage.code_version.clone(),
            code_version: self.code_version.clone(),
        };
        let names: Vec<String> = orders.names.clone();
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let manifest = fitted.manifest(&names, lineage.clone(), created);
        let details = [
            ("training set".to_string(), format!("version {}: {} orders", self.set.version, orders.len())),
            ("lineage".to_string(), format!("events v{}, features v{}, {}", lineage.lake_version, lineage.features_version, lineage.trainset_code_version)),
            ("model".to_string(), format!("{} rounds, positive weight {:.2}, {}", fitted.model.rounds, fitted.model.positive_weight, self.code_version)),
            ("parity with XGBoost".to_string(), format!("largest difference {:.1e}", fitted.parity)),
        ];
        let report = crate::report::html("sellable p_fulfill model", &details, &fitted.evaluation)?;
        let version = registry.register(fitted.model.json(), manifest, &fitted.metrics_json(), &report)?;
        if promote {
            registry.promote(&version, &sellable_core::features::names())?;
        }
        Ok(Registered { version, fitted, orders: orders.len(), positives: orders.positives(), lineage })
    }
}
