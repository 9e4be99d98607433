//! Training with the real XGBoost library: a time split of labelled orders, early stopping on
//! the validation days' log loss, positive-class weighting for the rare oversells, and a prior
//! correction so the exported probabilities stay calibrated despite the weighting.
//!
//! The model predicts the probability that an order is **shorted** (label 1); serving's
//! `p_fulfill` is one minus it.

use serde_json::Value;
use xgb::parameters::BoosterParameters;
use xgb::{Booster, DMatrix};

use crate::config::{TrainConfig, XgboostConfig};
use crate::ModelError;

pub(crate) const DAY_MS: i64 = 86_400_000;

/// Labelled orders in time order, features row-major as XGBoost takes them (`NaN` = missing).
#[derive(Debug, Clone, Default)]
pub struct Orders {
    pub names: Vec<String>,
    pub ts: Vec<i64>,
    /// `rows × names.len()`.
    pub features: Vec<f32>,
    /// 1: shorted, 0: shipped.
    pub labels: Vec<f32>,
    /// Naive ATP at decision time and the quantity ordered: what the baselines decide from.
    pub atp: Vec<f64>,
    pub qty: Vec<f64>,
}

impl Orders {
    /// An empty set over `names`, which must hold the real-time features `atp_now` and
    /// `order_qty` (the baselines read them).
    pub fn new(names: &[&str]) -> Result<Orders, ModelError> {
        for needed in ["atp_now", "order_qty"] {
            if !names.contains(&needed) {
                return Err(ModelError::Data(format!("the feature list has no `{needed}`")));
            }
        }
        Ok(Orders { names: names.iter().map(ToString::to_string).collect(), ..Orders::default() })
    }

    pub fn push(&mut self, ts: i64, features: &[f64], label: i64) -> Result<(), ModelError> {
        if features.len() != self.names.len() {
            return Err(ModelError::Data(format!("an order has {} features, the list has {}", features.len(), self.names.len())));
        }
        if !(label == 0 || label == 1) {
            return Err(ModelError::Data(format!("label {label} is neither 0 nor 1")));
        }
        let named = |name: &str| features[self.names.iter().position(|n| n == name).expect("checked in Orders::new")];
        self.atp.push(named("atp_now"));
        self.qty.push(named("order_qty"));
        self.ts.push(ts);
        self.features.extend(features.iter().map(|&value| value as f32));
        self.labels.push(label as f32);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|label| **label == 1.0).count()
    }

    fn rows(&self, range: std::ops::Range<usize>) -> Orders {
        let width = self.names.len();
        Orders {
            names: self.names.clone(),
            ts: self.ts[range.clone()].to_vec(),
            features: self.features[range.start * width..range.end * width].to_vec(),
            labels: self.labels[range.clone()].to_vec(),
            atp: self.atp[range.clone()].to_vec(),
            qty: self.qty[range].to_vec(),
        }
    }

    /// Splits by whole UTC days: the last `test` days are held out, the `validation` days before
    /// them validate, every earlier day trains. Orders must be in time order.
    pub fn split(&self, validation: u32, test: u32) -> Result<Split, ModelError> {
        if self.ts.windows(2).any(|pair| pair[0] > pair[1]) {
            return Err(ModelError::Data("orders are not in time order".into()));
        }
        let days: Vec<i64> = self.ts.iter().map(|ts| ts.div_euclid(DAY_MS)).collect();
        let mut distinct = days.clone();
        distinct.dedup();
        let needed = (validation + test + 1) as usize;
        if distinct.len() < needed {
            return Err(ModelError::Data(format!(
                "the orders span {} day(s); training needs at least {needed} ({validation} validation, {test} test, 1 to train on)",
                distinct.len()
            )));
        }
        let first_validation = distinct[distinct.len() - (validation + test) as usize];
        let first_test = distinct[distinct.len() - test as usize];
        let validation_start = days.partition_point(|day| *day < first_validation);
        let test_start = days.partition_point(|day| *day < first_test);
        Ok(Split {
            train: self.rows(0..validation_start),
            validation: self.rows(validation_start..test_start),
            test: self.rows(test_start..self.len()),
        })
    }

    fn matrix(&self) -> Result<DMatrix, ModelError> {
        let mut matrix = DMatrix::from_dense(&self.features, self.len())?;
        matrix.set_labels(&self.labels)?;
        Ok(matrix)
    }
}

/// The time split of [`Orders::split`].
pub struct Split {
    pub train: Orders,
    pub validation: Orders,
    pub test: Orders,
}

/// One boosting round, as reported while training.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub round: u32,
    pub validation_log_loss: f64,
    pub best_round: u32,
}

/// A trained model: XGBoost's booster (kept for its own predictions, the parity reference)
/// and the JSON the registry stores.
pub struct TrainedModel {
    booster: Booster,
    json: String,
    /// Rounds kept (the best validation round + 1).
    pub rounds: u32,
    pub positive_weight: f64,
}

impl TrainedModel {
    /// The model in XGBoost's JSON format.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// XGBoost's own predictions (probability of a short) for row-major features.
    pub fn predict(&self, features: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
        let matrix = DMatrix::from_dense(features, rows)?;
        Ok(self.booster.predict(&matrix)?)
    }
}

fn booster_for(config: &TrainConfig, positive_weight: f64, cached: &[&DMatrix]) -> Result<Booster, ModelError> {
    let x = &config.xgboost;
    let mut booster = Booster::new_with_cached_dmats(&BoosterParameters::default(), cached)?;
    for (name, value) in [
        ("objective", "binary:logistic".to_string()),
        ("eval_metric", "logloss".to_string()),
        ("tree_method", "hist".to_string()),
        ("max_depth", x.max_depth.to_string()),
        ("eta", x.eta.to_string()),
        ("min_child_weight", x.min_child_weight.to_string()),
        ("subsample", x.subsample.to_string()),
        ("colsample_bytree", x.colsample_bytree.to_string()),
        ("lambda", x.lambda.to_string()),
        ("scale_pos_weight", positive_weight.to_string()),
        ("seed", x.seed.to_string()),
        ("nthread", x.threads.to_string()),
    ] {
        booster.set_param(name, &value)?;
    }
    Ok(booster)
}

/// Trains on `train`, stopping early on `validation`'s log loss; `on_round` sees every round.
pub fn train(train: &Orders, validation: &Orders, config: &TrainConfig, mut on_round: impl FnMut(Round)) -> Result<TrainedModel, ModelError> {
    for (name, orders) in [("training", train), ("validation", validation)] {
        if orders.is_empty() || orders.positives() == 0 || orders.positives() == orders.len() {
            return Err(ModelError::Data(format!(
                "the {name} days hold {} orders, {} of them shorted: both outcomes are needed",
                orders.len(),
                orders.positives()
            )));
        }
    }
    let positive_weight = config.xgboost.scale_pos_weight.resolve(train.positives(), train.len() - train.positives());
    let (train_matrix, validation_matrix) = (train.matrix()?, validation.matrix()?);
    let mut booster = booster_for(config, positive_weight, &[&train_matrix, &validation_matrix])?;
    let (mut best_round, mut best_loss) = (0u32, f64::INFINITY);
    for round in 0..config.xgboost.rounds {
        booster.update(&train_matrix, round as i32)?;
        // the weighted loss is what training minimises; validation is weighted the same way
        let loss = weighted_log_loss(&booster.predict(&validation_matrix)?, &validation.labels, positive_weight);
        if loss < best_loss {
            (best_round, best_loss) = (round, loss);
        }
        on_round(Round { round, validation_log_loss: loss, best_round });
        if round - best_round >= config.xgboost.early_stopping_rounds {
            break;
        }
    }
    let best = booster.slice(0, best_round as i32 + 1)?;
    let json = prior_corrected(&best, positive_weight)?;
    // the booster of the corrected JSON, so XGBoost's predictions are those of what we store
    let booster = Booster::load_buffer(json.as_bytes())?;
    Ok(TrainedModel { booster, json, rounds: best_round + 1, positive_weight })
}

/// Exactly `rounds` rounds on every row, unweighted, no early stopping: the fixed-size models of
/// the scoring benchmark and the evaluator's tests.
pub fn train_fixed(features: &[f32], rows: usize, labels: &[f32], rounds: u32, max_depth: u32, eta: f64) -> Result<TrainedModel, ModelError> {
    if rows == 0 || labels.len() != rows || !features.len().is_multiple_of(rows) {
        return Err(ModelError::Data(format!("{} feature values, {rows} rows and {} labels do not form a matrix", features.len(), labels.len())));
    }
    let mut matrix = DMatrix::from_dense(features, rows)?;
    matrix.set_labels(labels)?;
    let xgboost = XgboostConfig { rounds, max_depth, eta, subsample: 1.0, colsample_bytree: 1.0, ..XgboostConfig::default() };
    let config = TrainConfig { xgboost, ..TrainConfig::default() };
    let mut booster = booster_for(&config, 1.0, &[&matrix])?;
    for round in 0..rounds {
        booster.update(&matrix, round as i32)?;
    }
    let json = prior_corrected(&booster, 1.0)?;
    Ok(TrainedModel { booster, json, rounds, positive_weight: 1.0 })
}

fn weighted_log_loss(predictions: &[f32], labels: &[f32], positive_weight: f64) -> f64 {
    let (mut loss, mut weight) = (0.0, 0.0);
    for (&p, &label) in predictions.iter().zip(labels) {
        let p = (p as f64).clamp(1e-15, 1.0 - 1e-15);
        let (w, l) = if label == 1.0 { (positive_weight, -p.ln()) } else { (1.0, -(1.0 - p).ln()) };
        loss += w * l;
        weight += w;
    }
    loss / weight
}

/// Weighting positives by `w` multiplies the odds the model learns by `w`; dividing the base
/// score's odds by `w` takes that back, so the stored model predicts calibrated probabilities.
fn prior_corrected(booster: &Booster, positive_weight: f64) -> Result<String, ModelError> {
    let bytes = booster.save_buffer(false)?;
    let text = String::from_utf8(bytes).map_err(|e| ModelError::Data(format!("model JSON is not UTF-8: {e}")))?;
    if positive_weight == 1.0 {
        return Ok(text);
    }
    let mut json: Value = serde_json::from_str(&text).map_err(|e| ModelError::Data(format!("model JSON: {e}")))?;
    let param = &mut json["learner"]["learner_model_param"]["base_score"];
    let stored = param.as_str().ok_or_else(|| ModelError::Data("model JSON: base_score is not text".into()))?;
    let base: f64 = stored
        .trim_matches(|c| c == '[' || c == ']')
        .parse()
        .map_err(|_| ModelError::Data(format!("model JSON: base_score '{stored}' is not a number")))?;
    let odds = base / (1.0 - base) / positive_weight;
    let corrected = odds / (1.0 + odds);
    *param = Value::from(if stored.starts_with('[') { format!("[{corrected:E}]") } else { format!("{corrected:E}") });
    Ok(json.to_string())
}

/// Feature importance by gain: each feature's average loss reduction over the splits that use
/// it (XGBoost's "gain"), read from the model's JSON; most important first, unused left out.
pub fn importance(json: &str, names: &[String]) -> Result<Vec<(String, f64)>, ModelError> {
    let json: Value = serde_json::from_str(json).map_err(|e| ModelError::Data(format!("model JSON: {e}")))?;
    let trees = json["learner"]["gradient_booster"]["model"]["trees"]
        .as_array()
        .ok_or_else(|| ModelError::Data("model JSON: no trees".into()))?;
    let mut gain = vec![(0.0f64, 0u64); names.len()];
    for tree in trees {
        let lefts = tree["left_children"].as_array().into_iter().flatten();
        let splits = tree["split_indices"].as_array().into_iter().flatten();
        let losses = tree["loss_changes"].as_array().into_iter().flatten();
        for ((left, split), loss) in lefts.zip(splits).zip(losses) {
            let (Some(left), Some(split), Some(loss)) = (left.as_i64(), split.as_u64(), loss.as_f64()) else { continue };
            if left != -1 && (split as usize) < names.len() {
                gain[split as usize].0 += loss;
                gain[split as usize].1 += 1;
            }
        }
    }
    let mut ranked: Vec<(String, f64)> = names
        .iter()
        .zip(gain)
        .filter(|(_, (_, count))| *count > 0)
        .map(|(name, (total, count))| (name.clone(), total / count as f64))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(ranked)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::PositiveWeight;

    /// Orders over `days` days: the short risk grows as ATP shrinks towards the quantity and with
    /// a hidden "phantom" feature; noise in the rest.
    pub(crate) fn marketplace(days: i64, per_day: i64, seed: u64) -> Orders {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 1_000_000) as f64 / 1_000_000.0
        };
        let mut orders = Orders::new(&["order_qty", "atp_now", "phantom", "noise"]).unwrap();
        for index in 0..days * per_day {
            let ts = index * DAY_MS / per_day;
            let qty = 1.0 + (next() * 3.0).floor();
            let atp = (next() * 12.0).floor();
            let phantom = next();
            let risk = if atp < qty { 0.9 } else { 0.02 + 0.5 * phantom.powi(4) + 0.2 / (1.0 + atp - qty) };
            let label = i64::from(next() < risk);
            let noise = if next() < 0.1 { f64::NAN } else { next() };
            orders.push(ts, &[qty, atp, phantom, noise], label).unwrap();
        }
        orders
    }

    #[test]
    fn the_split_follows_whole_days() {
        let orders = marketplace(5, 100, 1);
        let split = orders.split(1, 2).unwrap();
        assert_eq!((split.train.len(), split.validation.len(), split.test.len()), (200, 100, 200));
        assert!(split.train.ts.last() < split.validation.ts.first());
        assert_eq!(split.test.features.len(), 200 * 4);
        let error = orders.split(3, 2).err().unwrap().to_string();
        assert_eq!(error, "training data: the orders span 5 day(s); training needs at least 6 (3 validation, 2 test, 1 to train on)");
    }

    #[test]
    fn early_stopping_keeps_the_best_round_and_probabilities_stay_calibrated() {
        let orders = marketplace(6, 2_000, 5);
        let split = orders.split(1, 1).unwrap();
        let mut config = TrainConfig::default();
        config.xgboost.rounds = 300;
        config.xgboost.eta = 0.3;
        config.xgboost.early_stopping_rounds = 10;
        let mut seen = Vec::new();
        let model = train(&split.train, &split.validation, &config, |round| seen.push(round)).unwrap();
        let last = seen.last().unwrap();
        assert!(seen.len() < 300, "stopped early after {} rounds", seen.len());
        assert_eq!(last.round - last.best_round, 10);
        assert_eq!(model.rounds, last.best_round + 1);
        assert!(model.positive_weight > 1.0, "auto weight for the rare class: {}", model.positive_weight);
        // the prior correction: the mean prediction on the held-out day is close to the short rate
        let predictions = model.predict(&split.test.features, split.test.len()).unwrap();
        let mean = predictions.iter().map(|p| *p as f64).sum::<f64>() / predictions.len() as f64;
        let rate = split.test.positives() as f64 / split.test.len() as f64;
        assert!((mean - rate).abs() < 0.25 * rate, "mean prediction {mean:.4} vs short rate {rate:.4}");
        let ranked = importance(model.json(), &split.train.names).unwrap();
        let top: Vec<&str> = ranked.iter().take(2).map(|(name, _)| name.as_str()).collect();
        assert!(top.contains(&"atp_now") || top.contains(&"phantom"), "{ranked:?}");
        assert_ne!(ranked[0].0, "noise");
    }

    #[test]
    fn mismatched_shapes_are_rejected() {
        let error = train_fixed(&[1.0, 2.0, 3.0], 2, &[0.0, 1.0], 3, 6, 0.3).err().unwrap();
        assert_eq!(error.to_string(), "training data: 3 feature values, 2 rows and 2 labels do not form a matrix");
    }

    #[test]
    fn one_sided_days_are_refused() {
        let mut orders = marketplace(3, 50, 2);
        orders.labels.iter_mut().for_each(|label| *label = 0.0);
        let split = orders.split(1, 1).unwrap();
        let config = TrainConfig { xgboost: crate::config::XgboostConfig { scale_pos_weight: PositiveWeight::Fixed(1.0), ..Default::default() }, ..Default::default() };
        let error = train(&split.train, &split.validation, &config, |_| {}).err().unwrap().to_string();
        assert_eq!(error, "training data: the training days hold 50 orders, 0 of them shorted: both outcomes are needed");
    }
}
