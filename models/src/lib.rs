//! sellable-models: trains the `p_fulfill` model with the real XGBoost library (through the
//! `xgb` binding, linked against the shared library `scripts/setup.sh` installs) and exports it
//! as XGBoost JSON. The registry and the pure-Rust evaluator come with the models issue.
//!
//! Tests live beside the code.

pub mod evaluator;

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

use xgb::parameters::BoosterParameters;
use xgb::{Booster, DMatrix};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("xgboost: {0}")]
    Xgboost(#[from] xgb::XGBError),
    #[error("training data: {0}")]
    Data(String),
}

/// Hyper-parameters for binary classification.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub rounds: u32,
    pub max_depth: u32,
    pub eta: f64,
}

impl Default for TrainConfig {
    fn default() -> TrainConfig {
        TrainConfig { rounds: 50, max_depth: 6, eta: 0.3 }
    }
}

/// A trained model: the XGBoost booster and its JSON export.
pub struct TrainedModel {
    booster: Booster,
}

impl TrainedModel {
    /// The model in XGBoost's JSON format (what the registry stores).
    pub fn to_json(&self) -> Result<String, ModelError> {
        let bytes = self.booster.save_buffer(false)?;
        String::from_utf8(bytes).map_err(|e| ModelError::Data(format!("model JSON is not UTF-8: {e}")))
    }

    /// XGBoost's own predictions (probabilities) for row-major features.
    pub fn predict(&self, features: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
        let matrix = DMatrix::from_dense(features, rows)?;
        Ok(self.booster.predict(&matrix)?)
    }
}

/// Trains a binary classifier on row-major `features` (`rows` × n) with 0/1 `labels`.
pub fn train_binary(features: &[f32], rows: usize, labels: &[f32], config: &TrainConfig) -> Result<TrainedModel, ModelError> {
    if rows == 0 || labels.len() != rows || features.len() % rows != 0 {
        return Err(ModelError::Data(format!(
            "{} feature values, {rows} rows and {} labels do not form a matrix",
            features.len(),
            labels.len()
        )));
    }
    let mut train = DMatrix::from_dense(features, rows)?;
    train.set_labels(labels)?;
    let mut booster = Booster::new_with_cached_dmats(&BoosterParameters::default(), &[&train])?;
    for (name, value) in [
        ("objective", "binary:logistic".to_string()),
        ("eval_metric", "logloss".to_string()),
        ("max_depth", config.max_depth.to_string()),
        ("eta", config.eta.to_string()),
        ("nthread", "2".to_string()),
    ] {
        booster.set_param(name, &value)?;
    }
    for round in 0..config.rounds {
        booster.update(&train, round as i32)?;
    }
    Ok(TrainedModel { booster })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xgboost_learns_a_threshold_and_exports_json() {
        // label = feature 0 > 0.5; feature 1 is noise
        let rows = 200;
        let features: Vec<f32> = (0..rows).flat_map(|i| [(i as f32) / rows as f32, ((i * 7) % 13) as f32]).collect();
        let labels: Vec<f32> = (0..rows).map(|i| if i * 2 > rows { 1.0 } else { 0.0 }).collect();
        let model = train_binary(&features, rows, &labels, &TrainConfig { rounds: 20, ..TrainConfig::default() }).unwrap();
        let predictions = model.predict(&[0.1, 3.0, 0.9, 3.0], 2).unwrap();
        assert!(predictions[0] < 0.2 && predictions[1] > 0.8, "predictions {predictions:?}");
        let json: serde_json::Value = serde_json::from_str(&model.to_json().unwrap()).unwrap();
        assert!(json["learner"]["gradient_booster"]["model"]["trees"].as_array().is_some_and(|t| t.len() == 20));
    }

    #[test]
    fn mismatched_shapes_are_rejected() {
        let error = train_binary(&[1.0, 2.0, 3.0], 2, &[0.0, 1.0], &TrainConfig::default()).err().unwrap();
        assert_eq!(error.to_string(), "training data: 3 feature values, 2 rows and 2 labels do not form a matrix");
    }
}
