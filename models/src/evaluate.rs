//! Evaluation on held-out days, beside the two policies inventory teams use today:
//!
//! - **naive ATP**: promise iff ATP ≥ qty;
//! - **best static safety stock**: promise iff ATP ≥ qty + k, with k the smallest that meets the
//!   target oversell rate on the training days (the lowest-oversell k if none does);
//! - **the model**: promise iff ATP ≥ qty and `p_fulfill` ≥ the threshold, the threshold being the
//!   lowest that meets the target oversell rate on the validation days (so it promises the most).
//!
//! An *oversell* is a promised order that was shorted; a *false deny* a denied order that shipped.
//! The operating curve plots the oversell rate among promised orders against the false-deny rate
//! among shipped orders; a policy is better if its point is lower at the same false-deny rate.

use serde::Serialize;

use crate::config::Target;
use crate::train::Orders;

/// Largest safety stock tried.
const MAX_SAFETY_STOCK: i64 = 200;

/// What a policy did to a set of orders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Outcome {
    pub orders: u64,
    pub promised: u64,
    /// Promised and shorted.
    pub oversells: u64,
    /// Shorted orders denied: the oversells the policy caught.
    pub oversells_caught: u64,
    /// Denied although they shipped.
    pub false_denies: u64,
    pub shipped: u64,
    /// Oversells / promised.
    pub oversell_rate: f64,
    /// False denies / shipped.
    pub false_deny_rate: f64,
}

impl Outcome {
    pub fn of(orders: &Orders, promise: impl Fn(usize) -> bool) -> Outcome {
        let mut outcome = Outcome { orders: orders.len() as u64, ..Outcome::default() };
        for (index, label) in orders.labels.iter().enumerate() {
            let shorted = *label == 1.0;
            outcome.shipped += u64::from(!shorted);
            match (promise(index), shorted) {
                (true, true) => outcome.oversells += 1,
                (false, true) => outcome.oversells_caught += 1,
                (false, false) => outcome.false_denies += 1,
                (true, false) => {}
            }
            outcome.promised += u64::from(promise(index));
        }
        outcome.oversell_rate = ratio(outcome.oversells, outcome.promised);
        outcome.false_deny_rate = ratio(outcome.false_denies, outcome.shipped);
        outcome
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Promise iff ATP covers the quantity plus `safety_stock`.
pub fn safety_stock_promises(orders: &Orders, index: usize, safety_stock: i64) -> bool {
    orders.atp[index] >= orders.qty[index] + safety_stock as f64
}

/// The smallest safety stock whose oversell rate on `orders` is at most `target`, or the one
/// with the lowest oversell rate if none is.
pub fn best_safety_stock(orders: &Orders, target: f64) -> i64 {
    let mut lowest = (0, f64::INFINITY);
    for k in 0..=MAX_SAFETY_STOCK {
        let outcome = Outcome::of(orders, |index| safety_stock_promises(orders, index, k));
        if outcome.promised > 0 && outcome.oversell_rate <= target {
            return k;
        }
        if outcome.promised > 0 && outcome.oversell_rate < lowest.1 {
            lowest = (k, outcome.oversell_rate);
        }
    }
    lowest.0
}

/// One operating point of the model: promising every order with ATP ≥ qty and `p_fulfill` ≥
/// `threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub threshold: f64,
    pub oversell_rate: f64,
    pub false_deny_rate: f64,
    pub oversells: u64,
    pub false_denies: u64,
}

/// Every distinct operating point of the model on `orders`, from promising nothing to promising
/// every order ATP covers (thresholds falling).
pub fn operating_curve(orders: &Orders, p_fulfill: &[f64]) -> Vec<Point> {
    let shipped = orders.labels.iter().filter(|label| **label == 0.0).count() as u64;
    let mut eligible: Vec<usize> = (0..orders.len()).filter(|&index| orders.atp[index] >= orders.qty[index]).collect();
    eligible.sort_by(|&a, &b| p_fulfill[b].total_cmp(&p_fulfill[a]));
    let mut points = vec![Point { threshold: f64::INFINITY, oversell_rate: 0.0, false_deny_rate: ratio(shipped, shipped), oversells: 0, false_denies: shipped }];
    let (mut promised, mut oversells) = (0u64, 0u64);
    for (position, &index) in eligible.iter().enumerate() {
        promised += 1;
        oversells += u64::from(orders.labels[index] == 1.0);
        // a threshold sits between distinct scores: equal scores are promised together
        if eligible.get(position + 1).is_some_and(|&next| p_fulfill[next] == p_fulfill[index]) {
            continue;
        }
        let false_denies = shipped - (promised - oversells);
        points.push(Point {
            threshold: p_fulfill[index],
            oversell_rate: ratio(oversells, promised),
            false_deny_rate: ratio(false_denies, shipped),
            oversells,
            false_denies,
        });
    }
    points
}

/// The lowest threshold whose oversell rate on `orders` is at most `target` (promising the most
/// orders); `1.0` if even the most confident orders miss it (then almost nothing is promised).
pub fn choose_threshold(orders: &Orders, p_fulfill: &[f64], target: f64) -> f64 {
    operating_curve(orders, p_fulfill)
        .iter()
        .skip(1)
        .filter(|point| point.oversell_rate <= target)
        .map(|point| point.threshold)
        .fold(f64::INFINITY, f64::min)
        .min(1.0)
}

/// What an oversell budget can ask of the model, from an operating curve on `orders` (the
/// validation days'): (threshold, oversell rate) pairs, thresholds rising, each rate lower than
/// every rate at a lower threshold. The lowest threshold meeting a budget
/// ([`choose_threshold`]'s answer for it) is the first pair whose rate does
/// ([`crate::registry::threshold_within`]).
pub fn budgets(orders: &Orders, p_fulfill: &[f64]) -> Vec<[f64; 2]> {
    let mut lowest = f64::INFINITY;
    let mut pairs = Vec::new();
    for point in operating_curve(orders, p_fulfill).iter().skip(1).rev() {
        if point.oversell_rate < lowest {
            lowest = point.oversell_rate;
            pairs.push([point.threshold, point.oversell_rate]);
        }
    }
    pairs
}

/// Average precision of ranking orders by short probability (the area under the PR curve for
/// the oversell class), and the curve itself as (recall, precision) points.
pub fn precision_recall(labels: &[f32], p_short: &[f64]) -> (f64, Vec<(f64, f64)>) {
    let positives = labels.iter().filter(|label| **label == 1.0).count() as f64;
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| p_short[b].total_cmp(&p_short[a]));
    let (mut found, mut seen, mut area, mut last_recall) = (0.0, 0.0, 0.0, 0.0);
    let mut curve = Vec::new();
    for (position, &index) in order.iter().enumerate() {
        seen += 1.0;
        found += f64::from(labels[index]);
        if order.get(position + 1).is_some_and(|&next| p_short[next] == p_short[index]) {
            continue;
        }
        let (recall, precision) = (found / positives.max(1.0), found / seen);
        area += (recall - last_recall) * precision;
        last_recall = recall;
        curve.push((recall, precision));
    }
    (area, curve)
}

pub fn log_loss(labels: &[f32], p_short: &[f64]) -> f64 {
    let total: f64 = labels
        .iter()
        .zip(p_short)
        .map(|(&label, &p)| {
            let p = p.clamp(1e-15, 1.0 - 1e-15);
            if label == 1.0 {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum();
    total / labels.len().max(1) as f64
}

/// One bin of the calibration plot.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CalibrationBin {
    pub predicted: f64,
    pub observed: f64,
    pub orders: u64,
}

/// Expected calibration error over 10 equal-width bins of the short probability, and the bins.
pub fn calibration(labels: &[f32], p_short: &[f64]) -> (f64, Vec<CalibrationBin>) {
    let mut sums = [(0.0f64, 0.0f64, 0u64); 10];
    for (&label, &p) in labels.iter().zip(p_short) {
        let bin = ((p * 10.0) as usize).min(9);
        sums[bin].0 += p;
        sums[bin].1 += f64::from(label);
        sums[bin].2 += 1;
    }
    let total = labels.len().max(1) as f64;
    let bins: Vec<CalibrationBin> = sums
        .iter()
        .filter(|(_, _, count)| *count > 0)
        .map(|&(predicted, observed, orders)| CalibrationBin { predicted: predicted / orders as f64, observed: observed / orders as f64, orders })
        .collect();
    let error = bins.iter().map(|bin| bin.orders as f64 / total * (bin.predicted - bin.observed).abs()).sum();
    (error, bins)
}

/// One UTC day of scored orders: the mean predicted short probability beside the observed short
/// rate (how far the scores drift from what happened, day by day).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DayRate {
    /// The day's first instant (ms since the epoch, UTC midnight).
    pub day: i64,
    /// Whether the day was held out (the validation days chose the operating points).
    pub held_out: bool,
    pub orders: u64,
    pub predicted: f64,
    pub observed: f64,
}

/// The [`DayRate`]s of `orders` scored `p_fulfill`, in day order.
pub fn day_rates(orders: &Orders, p_fulfill: &[f64], held_out: bool) -> Vec<DayRate> {
    let mut days: Vec<DayRate> = Vec::new();
    for (index, ts) in orders.ts.iter().enumerate() {
        let day = ts - ts.rem_euclid(crate::train::DAY_MS);
        if days.last().is_none_or(|last| last.day != day) {
            days.push(DayRate { day, held_out, orders: 0, predicted: 0.0, observed: 0.0 });
        }
        let last = days.last_mut().expect("pushed");
        last.orders += 1;
        last.predicted += 1.0 - p_fulfill[index];
        last.observed += f64::from(orders.labels[index]);
    }
    for day in &mut days {
        day.predicted /= day.orders as f64;
        day.observed /= day.orders as f64;
    }
    days
}

/// Everything `metrics.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// The target the threshold was chosen for, resolved on the validation days.
    pub target_oversell_rate: f64,
    /// What makes this evaluation's operating point suspect, said loudly wherever it is shown.
    pub warnings: Vec<String>,
    pub threshold: f64,
    pub safety_stock: i64,
    pub orders: SetSizes,
    /// On the held-out (test) days.
    pub pr_auc: f64,
    /// The share of shorted orders: a ranking without skill has this PR-AUC.
    pub short_rate: f64,
    pub log_loss: f64,
    pub calibration_error: f64,
    /// The three policies on the held-out days, the model at its threshold.
    pub model: Outcome,
    pub naive_atp: Outcome,
    pub static_safety_stock: Outcome,
    /// The model beside the safety stock that denied no more shipped orders than it on the
    /// validation days: their oversells on the held-out days.
    pub at_matched_false_denies: Comparison,
    /// The model beside the safety stock that oversold no more orders than it on the validation
    /// days: their false denies on the held-out days.
    pub at_matched_oversells: Comparison,
    pub calibration: Vec<CalibrationBin>,
    /// The validation and held-out days, each day's mean predicted short probability beside its
    /// observed short rate.
    pub days: Vec<DayRate>,
    pub importance: Vec<(String, f64)>,
    /// The same training without each group of features in turn ([`ABLATION_GROUPS`]), first
    /// the model with all of them: what each group adds on the held-out days.
    pub ablation: Vec<Ablation>,
    /// The validation days' thresholds for oversell budgets ([`budgets`]), for the manifest.
    #[serde(skip)]
    pub budgets: Vec<[f64; 2]>,
    #[serde(skip)]
    pub curve: Vec<Point>,
    #[serde(skip)]
    pub precision_recall: Vec<(f64, f64)>,
    /// The safety stock on the held-out days for k = 0, 1, 2, … (the static policies' curve).
    #[serde(skip)]
    pub safety_stocks: Vec<(i64, Outcome)>,
}

/// Groups of features the ablation takes out one at a time: a feature is in a group when its
/// name is one of the group's names, or starts with one ending in `_`.
pub const ABLATION_GROUPS: [(&str, &[&str]); 8] = [
    ("recent demand (velocity_5m, velocity_1h)", &["velocity_5m", "velocity_1h"]),
    ("demand windows (reserves 5m to 7d, sku×node and SKU)", &["reserve_", "sku_reserve_"]),
    ("count discrepancies and count age (phantom stock)", &["count_bias_30d", "count_mae_30d", "counts_30d", "hours_since_count"]),
    ("seller feed lag and reliability", &["feed_lag_p50_s", "feed_lag_p95_s", "feed_reliability_30d"]),
    ("short history (sku×node and node, 30 days)", &["short_rate_30d", "node_short_rate_30d"]),
    ("cancels and returns (7 days)", &["cancel_rate_7d", "return_rate_7d"]),
    ("time since events, anchor and receipt", &["hours_since_event", "hours_since_receipt", "hours_since_event_now", "hours_since_anchor_now"]),
    ("hour of day and day of week", &["hour_of_day", "day_of_week"]),
];

/// Whether feature `name` is in an ablation group of `names`.
pub fn in_group(name: &str, names: &[&str]) -> bool {
    names.iter().any(|group| name == *group || (group.ends_with('_') && name.starts_with(group)))
}

/// A model trained without one group of features (`without` empty: with all), at its own
/// threshold chosen on the validation days for the same target, on the held-out days.
#[derive(Debug, Clone, Serialize)]
pub struct Ablation {
    pub without: String,
    /// How many features the group holds.
    pub features: usize,
    pub pr_auc: f64,
    pub calibration_error: f64,
    pub threshold: f64,
    pub oversells: u64,
    pub false_denies: u64,
}

impl Ablation {
    /// The row of scores `p_fulfill` on the held-out days `test`, thresholded on the validation
    /// days as the model is.
    pub fn of(without: &str, features: usize, validation: (&Orders, &[f64]), test: (&Orders, &[f64]), target: f64) -> Ablation {
        let threshold = choose_threshold(validation.0, validation.1, target);
        let (test, p_fulfill) = test;
        let p_short: Vec<f64> = p_fulfill.iter().map(|p| 1.0 - p).collect();
        let outcome = Outcome::of(test, |index| test.atp[index] >= test.qty[index] && p_fulfill[index] >= threshold);
        Ablation {
            without: without.to_string(),
            features,
            pr_auc: precision_recall(&test.labels, &p_short).0,
            calibration_error: calibration(&test.labels, &p_short).0,
            threshold,
            oversells: outcome.oversells,
            false_denies: outcome.false_denies,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct SetSizes {
    pub train: u64,
    pub validation: u64,
    pub test: u64,
    pub test_shorted: u64,
}

/// The model at its threshold beside a static safety stock, both chosen before the held-out
/// days: their oversells and false denies on those days.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Comparison {
    /// The safety stock compared with, matched to the model on the validation days.
    pub safety_stock: i64,
    pub model_oversells: u64,
    pub model_false_denies: u64,
    pub safety_stock_oversells: u64,
    pub safety_stock_false_denies: u64,
}

impl Comparison {
    fn of(test: &Orders, model: &Outcome, safety_stock: i64) -> Comparison {
        let stock = Outcome::of(test, |index| safety_stock_promises(test, index, safety_stock));
        Comparison {
            safety_stock,
            model_oversells: model.oversells,
            model_false_denies: model.false_denies,
            safety_stock_oversells: stock.oversells,
            safety_stock_false_denies: stock.false_denies,
        }
    }
}

/// The safety stocks matched to the model's outcome on the validation days: the largest that
/// denies no more shipped orders than the model did there, and the smallest that oversells no
/// more orders than the model did there (the largest tried when none does).
pub fn matched_safety_stocks(validation: &Orders, model: &Outcome) -> (i64, i64) {
    let stocks: Vec<Outcome> = (0..=MAX_SAFETY_STOCK).map(|k| Outcome::of(validation, |index| safety_stock_promises(validation, index, k))).collect();
    let at_false_denies = stocks.iter().rposition(|stock| stock.false_denies <= model.false_denies).unwrap_or(0);
    let at_oversells = stocks.iter().position(|stock| stock.oversells <= model.oversells).unwrap_or(stocks.len() - 1);
    (at_false_denies as i64, at_oversells as i64)
}

/// Evaluates `p_fulfill` on the test days of `split`-like sets. Every choice is made before them:
/// the threshold on the validation scores, the best safety stock on the training days, and the
/// safety stocks the model is compared with on the validation days.
pub fn evaluate(
    train: &Orders,
    validation: (&Orders, &[f64]),
    test: (&Orders, &[f64]),
    target: Target,
    importance: Vec<(String, f64)>,
) -> Evaluation {
    let (validation, validation_p) = validation;
    let (test, p_fulfill) = test;
    let naive_on_validation = Outcome::of(validation, |index| safety_stock_promises(validation, index, 0));
    let target = match target {
        Target::VsNaiveAtp(share) => share * naive_on_validation.oversell_rate,
        Target::Rate(rate) => rate,
    };
    let mut warnings = Vec::new();
    if naive_on_validation.oversell_rate <= target {
        warnings.push(format!(
            "naive ATP already meets the target oversell rate {target:.4} on the validation days ({:.4}): the threshold promises whatever ATP \
             covers, and the model adds nothing; set a lower target_oversell_rate, or use target_vs_naive_atp",
            naive_on_validation.oversell_rate
        ));
    }
    let threshold = choose_threshold(validation, validation_p, target);
    let safety_stock = best_safety_stock(train, target);
    let p_short: Vec<f64> = p_fulfill.iter().map(|p| 1.0 - p).collect();
    let (pr_auc, precision_recall) = precision_recall(&test.labels, &p_short);
    let (calibration_error, calibration) = calibration(&test.labels, &p_short);
    let model = Outcome::of(test, |index| test.atp[index] >= test.qty[index] && p_fulfill[index] >= threshold);
    let naive_atp = Outcome::of(test, |index| safety_stock_promises(test, index, 0));
    let static_safety_stock = Outcome::of(test, |index| safety_stock_promises(test, index, safety_stock));
    let curve = operating_curve(test, p_fulfill);
    let on_validation = Outcome::of(validation, |index| validation.atp[index] >= validation.qty[index] && validation_p[index] >= threshold);
    let (at_false_denies, at_oversells) = matched_safety_stocks(validation, &on_validation);
    let safety_stocks = (0..=MAX_SAFETY_STOCK.min(safety_stock * 2 + 10))
        .map(|k| (k, Outcome::of(test, |index| safety_stock_promises(test, index, k))))
        .collect();
    Evaluation {
        target_oversell_rate: target,
        warnings,
        threshold,
        safety_stock,
        orders: SetSizes { train: train.len() as u64, validation: validation.len() as u64, test: test.len() as u64, test_shorted: test.positives() as u64 },
        pr_auc,
        short_rate: ratio(test.positives() as u64, test.len() as u64),
        log_loss: log_loss(&test.labels, &p_short),
        calibration_error,
        model,
        naive_atp,
        static_safety_stock,
        at_matched_false_denies: Comparison::of(test, &model, at_false_denies),
        at_matched_oversells: Comparison::of(test, &model, at_oversells),
        calibration,
        days: [day_rates(validation, validation_p, false), day_rates(test, p_fulfill, true)].concat(),
        importance,
        ablation: vec![Ablation {
            without: String::new(),
            features: 0,
            pr_auc,
            calibration_error,
            threshold,
            oversells: model.oversells,
            false_denies: model.false_denies,
        }],
        budgets: budgets(validation, validation_p),
        curve,
        precision_recall,
        safety_stocks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders(rows: &[(f64, f64, i64)]) -> Orders {
        let mut orders = Orders::new(&["order_qty", "atp_now"]).unwrap();
        for (index, &(qty, atp, label)) in rows.iter().enumerate() {
            orders.push(index as i64, &[qty, atp], label).unwrap();
        }
        orders
    }

    #[test]
    fn safety_stocks_are_matched_to_the_models_outcome() {
        // (qty, atp, shorted): k = 0 oversells 1 and denies none; k = 1 and 2 oversell none and
        // deny 1; k = 3 denies 2
        let set = orders(&[(1.0, 0.0, 1), (1.0, 1.0, 1), (1.0, 3.0, 0), (2.0, 2.0, 0), (1.0, 9.0, 0)]);
        let careful = Outcome::of(&set, |index| index == 2 || index == 4);
        assert_eq!((careful.oversells, careful.false_denies), (0, 1));
        assert_eq!(matched_safety_stocks(&set, &careful), (2, 1), "the largest denying no more, the smallest overselling no more");
        let naive = Outcome::of(&set, |index| index > 0);
        assert_eq!(matched_safety_stocks(&set, &naive), (0, 0));
    }

    #[test]
    fn a_target_naive_atp_meets_is_said_and_a_relative_one_follows_the_marketplace() {
        // naive ATP oversells 1 of 4 promised on these days
        let set = orders(&[(1.0, 0.0, 1), (1.0, 1.0, 1), (1.0, 3.0, 0), (2.0, 2.0, 0), (1.0, 9.0, 0)]);
        let p = [0.1, 0.2, 0.9, 0.8, 0.95];
        let loose = evaluate(&set, (&set, &p), (&set, &p), Target::Rate(0.3), Vec::new());
        assert_eq!(loose.warnings.len(), 1, "{:?}", loose.warnings);
        assert!(loose.warnings[0].starts_with("naive ATP already meets the target oversell rate 0.3000"), "{:?}", loose.warnings);
        let relative = evaluate(&set, (&set, &p), (&set, &p), Target::VsNaiveAtp(0.5), Vec::new());
        assert_eq!((relative.target_oversell_rate, relative.warnings.len()), (0.125, 0));
        assert!(relative.threshold > 0.2, "the shorted order's score is under the threshold: {}", relative.threshold);
    }

    #[test]
    fn outcomes_count_oversells_and_false_denies() {
        // (qty, atp, shorted)
        let set = orders(&[(1.0, 0.0, 1), (1.0, 1.0, 1), (1.0, 3.0, 0), (2.0, 2.0, 0), (1.0, 9.0, 0)]);
        let naive = Outcome::of(&set, |index| safety_stock_promises(&set, index, 0));
        assert_eq!((naive.promised, naive.oversells, naive.oversells_caught, naive.false_denies), (4, 1, 1, 0));
        let buffered = Outcome::of(&set, |index| safety_stock_promises(&set, index, 1));
        assert_eq!((buffered.promised, buffered.oversells, buffered.false_denies, buffered.shipped), (2, 0, 1, 3));
        assert_eq!(buffered.false_deny_rate, 1.0 / 3.0);
        assert_eq!(best_safety_stock(&set, 0.0), 1);
        assert_eq!(best_safety_stock(&set, 0.3), 0, "naive ATP oversells 1 in 4");
    }

    #[test]
    fn a_budget_gets_the_threshold_the_training_would_choose_for_it() {
        // scores and labels from a fixed generator: many ties, shorts among the confident ones
        let mut set = Orders::new(&["atp_now", "order_qty"]).unwrap();
        let (mut state, mut p) = (12345u64, Vec::new());
        for index in 0..400 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let score = ((state >> 33) % 50) as f64 / 50.0;
            let shorted = (state >> 20) % 100 < (60.0 * (1.0 - score)) as u64;
            let atp = if index % 7 == 0 { 0.0 } else { 5.0 };
            set.push(index, &[atp, 1.0], i64::from(shorted)).unwrap();
            p.push(score);
        }
        let pairs = budgets(&set, &p);
        assert!(pairs.len() > 3 && pairs.windows(2).all(|w| w[0][0] < w[1][0] && w[0][1] > w[1][1]), "{pairs:?}");
        for budget in [0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0] {
            assert_eq!(crate::registry::threshold_within(&pairs, budget), choose_threshold(&set, &p, budget), "budget {budget}");
        }
    }

    #[test]
    fn the_threshold_is_the_lowest_meeting_the_target() {
        let set = orders(&[(1.0, 5.0, 0), (1.0, 5.0, 0), (1.0, 5.0, 1), (1.0, 5.0, 0), (1.0, 0.0, 0)]);
        let p = [0.9, 0.8, 0.7, 0.6, 0.99];
        let curve = operating_curve(&set, &p);
        // nothing promised, then 0.9, 0.8, 0.7, 0.6 (the last order has no ATP: never promised)
        assert_eq!(curve.iter().map(|point| point.oversells).collect::<Vec<_>>(), [0, 0, 0, 1, 1]);
        assert_eq!(curve.last().unwrap().false_denies, 1);
        assert_eq!(choose_threshold(&set, &p, 0.0), 0.8);
        assert_eq!(choose_threshold(&set, &p, 0.25), 0.6);
        let ties = [0.5; 5];
        assert_eq!(operating_curve(&set, &ties).len(), 2, "equal scores are one operating point");
    }

    #[test]
    fn each_day_has_its_mean_prediction_and_short_rate() {
        let day = crate::train::DAY_MS;
        let mut set = Orders::new(&["order_qty", "atp_now"]).unwrap();
        for (ts, label) in [(day + 5, 1), (2 * day - 1, 0), (2 * day, 0), (3 * day + 9, 0)] {
            set.push(ts, &[1.0, 3.0], label).unwrap();
        }
        let rates = day_rates(&set, &[0.5, 0.9, 0.8, 0.6], true);
        assert_eq!(rates.iter().map(|rate| (rate.day, rate.orders)).collect::<Vec<_>>(), [(day, 2), (2 * day, 1), (3 * day, 1)]);
        assert!((rates[0].predicted - 0.3).abs() < 1e-12 && rates[0].observed == 0.5 && rates[2].observed == 0.0, "{rates:?}");
        assert!(rates.iter().all(|rate| rate.held_out));
    }

    #[test]
    fn ranking_metrics() {
        let labels = [1.0, 0.0, 1.0, 0.0];
        let (area, curve) = precision_recall(&labels, &[0.9, 0.8, 0.7, 0.1]);
        assert!((area - (0.5 * 1.0 + 0.5 * 2.0 / 3.0)).abs() < 1e-12, "{area}");
        assert_eq!(curve.last().unwrap().0, 1.0);
        assert!(log_loss(&labels, &[0.9, 0.1, 0.9, 0.1]) < log_loss(&labels, &[0.5; 4]));
        let (error, bins) = calibration(&labels, &[0.95, 0.05, 0.95, 0.05]);
        assert_eq!(bins.len(), 2);
        assert!((error - 0.05).abs() < 1e-12, "{error}");
    }
}
