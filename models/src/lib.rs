//! sellable-models: the `p_fulfill` model from training set to serving.
//!
//! - [`train`]: trains with the real XGBoost library (the `xgb` binding, linked against the
//!   shared library `scripts/setup.sh` installs): time split, early stopping, class weighting.
//! - [`evaluate`]: held-out metrics beside naive ATP and the best static safety stock, and the
//!   threshold for a target oversell rate; [`report`] renders them as `report.html`.
//! - [`registry`]: versions on disk, promotion and rollback, loading with checks.
//! - [`evaluator`]: scores the XGBoost JSON on the CPU without XGBoost (what serving calls).
//!
//! Tests live beside the code; they train real (small) XGBoost models.

pub mod config;
pub mod evaluate;
pub mod evaluator;
pub mod registry;
pub mod report;
pub mod train;

pub use config::TrainConfig;
pub use registry::{Model, Registry, RegistryError};
pub use train::{train_fixed, Orders, TrainedModel};

/// The benchmarks' timer (`cargo bench -p sellable-models` and `-p sellable-dsl`): median
/// nanoseconds per call of `work` over 7 batches of `calls`, after a warm-up.
pub fn median_ns(calls: u32, mut work: impl FnMut()) -> f64 {
    for _ in 0..calls / 10 + 1 {
        work();
    }
    let mut batches: Vec<f64> = (0..7)
        .map(|_| {
            let started = std::time::Instant::now();
            for _ in 0..calls {
                work();
            }
            started.elapsed().as_nanos() as f64 / calls as f64
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[3]
}

/// Every failure of training.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("xgboost: {0}")]
    Xgboost(#[from] xgb::XGBError),
    #[error("training data: {0}")]
    Data(String),
}

use evaluate::Evaluation;
use evaluator::Evaluator;
use registry::{Manifest, ModelLineage};

/// Largest difference allowed between the evaluator's scores and XGBoost's own predictions.
pub const PARITY_TOLERANCE: f64 = 1e-6;

/// A trained and evaluated model, ready to register.
pub struct Fitted {
    pub model: TrainedModel,
    pub evaluation: Evaluation,
    /// Largest |evaluator − XGBoost| over the validation and test orders.
    pub parity: f64,
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
    let importance = train::importance(model.json(), &orders.names)?;
    let evaluation = evaluate::evaluate(&split.train, (&split.validation, &validation_p), (&split.test, &test_p), config.target_oversell_rate, importance);
    Ok(Fitted { model, evaluation, parity, config: config.clone() })
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
            ("oversells_vs_safety_stock", e.at_safety_stock_false_deny_rate.ratio),
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
