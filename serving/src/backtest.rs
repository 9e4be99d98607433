//! Backtests: what the engine would have decided for every order of a past period, with a model
//! version and a rule set, beside what really happened and what the baselines would have done.
//!
//! Each order is decided by [`Serving::decide_moment`], the decision of live answers, from the
//! [`Moment`] a replay of the lake rebuilds for its time (the SKU's merged state, batch features
//! and node watermarks then): the regional answer for the order's quantity in its node's country
//! (events carry no buyer region; the country is where the order shipped), every node of that
//! country scored by the model and gated by its feed SLA by arrival time, then the rules.

use std::collections::HashMap;
use std::io::Write;

use sellable_core::features::TrainRow;
use sellable_core::{Millis, Moment, SkuInfo, Verdict};

use crate::{ApiError, Serving};

/// Why a backtest stopped.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("order {order_id}: unknown node '{node}'")]
    UnknownNode { order_id: String, node: String },
    #[error("order {order_id}: {error}")]
    Undecided { order_id: String, error: String },
    #[error("writing the backtest CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("writing the backtest CSV: {0}")]
    Io(#[from] std::io::Error),
}

/// The engine's decision for one order (a row of the backtest file).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BacktestRow {
    pub order_id: String,
    pub ts: Millis,
    pub sku: String,
    pub node: String,
    /// The region the order was decided for: its node's country.
    pub region: String,
    pub qty: i64,
    /// `promise` or `deny`.
    pub decision: &'static str,
    pub units: i64,
    /// The model's score of the order at its node.
    pub p_fulfill: Option<f64>,
    /// The rules that fired, as `node:rule`, `;`-separated.
    pub rules_fired: String,
    pub label: i64,
}

/// Oversells caught and orders wrongly denied, by the engine and by the baselines.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct BacktestSummary {
    pub orders: u64,
    pub shorted: u64,
    pub engine: PolicyCounts,
    /// Promise iff the ATP of the order's node ≥ qty.
    pub naive_atp: PolicyCounts,
    /// Promise iff the ATP of the order's node ≥ qty + `safety_stock`.
    pub static_safety_stock: PolicyCounts,
    pub safety_stock: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PolicyCounts {
    pub promised: u64,
    /// Shorted orders the policy denied.
    pub oversells_caught: u64,
    /// Shorted orders the policy promised.
    pub oversells: u64,
    /// Shipped orders the policy denied.
    pub wrongly_denied: u64,
}

impl PolicyCounts {
    fn add(&mut self, promised: bool, shorted: bool) {
        self.promised += u64::from(promised);
        match (promised, shorted) {
            (true, true) => self.oversells += 1,
            (false, true) => self.oversells_caught += 1,
            (false, false) => self.wrongly_denied += 1,
            (true, false) => {}
        }
    }
}

/// A backtest under way: the orders decided so far and their counts.
#[derive(Debug, Clone)]
pub struct Backtest {
    pub rows: Vec<BacktestRow>,
    pub summary: BacktestSummary,
    /// Where `atp_now` sits in an order's feature vector: what the baselines decide from.
    atp_at: usize,
}

impl Backtest {
    pub fn new(safety_stock: i64) -> Backtest {
        let atp_at = sellable_core::features::index("atp_now").expect("a real-time feature of core; this is a bug");
        Backtest { rows: Vec::new(), summary: BacktestSummary { safety_stock, ..BacktestSummary::default() }, atp_at }
    }

    /// Decides `order` with `serving` (its model and rules) from its `moment`. Orders at nodes
    /// the catalog does not know are an error naming them.
    pub fn decide(&mut self, serving: &Serving, skus: &HashMap<String, SkuInfo>, order: &TrainRow, moment: Moment) -> Result<(), BacktestError> {
        let _order = tracing::debug_span!("order", order_id = ?order.order_id, sku = ?order.sku, node = ?order.node).entered();
        let node = serving.nodes.get(&order.node).ok_or_else(|| BacktestError::UnknownNode { order_id: order.order_id.clone(), node: order.node.clone() })?;
        let info = skus.get(&order.sku).cloned().unwrap_or_else(|| SkuInfo { sku: order.sku.clone(), ..SkuInfo::default() });
        let answer = serving
            .decide_moment(moment, info, &node.country, order.qty, order.ts)
            .map_err(|error: ApiError| BacktestError::Undecided { order_id: order.order_id.clone(), error: error.to_string() })?;
        let promised = answer.decision == Verdict::Promise;
        let shorted = order.label == 1;
        let atp = order.features[self.atp_at] as i64;
        let summary = &mut self.summary;
        summary.orders += 1;
        summary.shorted += u64::from(shorted);
        summary.engine.add(promised, shorted);
        summary.naive_atp.add(atp >= order.qty, shorted);
        summary.static_safety_stock.add(atp >= order.qty + summary.safety_stock, shorted);
        self.rows.push(BacktestRow {
            order_id: order.order_id.clone(),
            ts: order.ts,
            sku: order.sku.clone(),
            node: order.node.clone(),
            region: node.country.clone(),
            qty: order.qty,
            decision: if promised { "promise" } else { "deny" },
            units: answer.units,
            p_fulfill: serving.models.current().map(|model| model.p_fulfill(&order.features)),
            rules_fired: answer.rules_fired.iter().map(|fired| format!("{}:{}", fired.node, fired.rule)).collect::<Vec<_>>().join(";"),
            label: order.label,
        });
        Ok(())
    }
}

impl Serving {
    /// Decides every replayed order as the engine would have at its time ([`Backtest::decide`]).
    pub fn backtest(
        &self,
        skus: &HashMap<String, SkuInfo>,
        orders: impl IntoIterator<Item = (TrainRow, Moment)>,
        safety_stock: i64,
    ) -> Result<(Vec<BacktestRow>, BacktestSummary), BacktestError> {
        let mut backtest = Backtest::new(safety_stock);
        for (order, moment) in orders {
            backtest.decide(self, skus, &order, moment)?;
        }
        Ok((backtest.rows, backtest.summary))
    }
}

/// One order two configurations decided otherwise: the first's decision and the second's.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Changed {
    pub order_id: String,
    pub ts: Millis,
    pub sku: String,
    pub node: String,
    pub qty: i64,
    pub decision_a: &'static str,
    pub decision_b: &'static str,
    pub p_fulfill_a: Option<f64>,
    pub p_fulfill_b: Option<f64>,
    pub rules_fired_a: String,
    pub rules_fired_b: String,
    pub label: i64,
}

/// What the second configuration would have done differently on the same orders.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ChangeSummary {
    pub changed: u64,
    /// Promised by the first, denied by the second.
    pub now_denied: u64,
    /// Denied by the first, promised by the second.
    pub now_promised: u64,
    /// Oversells of the second minus the first's (negative: fewer).
    pub net_oversells: i64,
    /// Shipped orders the second denied minus the first's.
    pub net_false_denies: i64,
}

/// The orders `a` and `b` (two backtests of the same orders, in the same order) decided
/// otherwise, and the net effect of deciding with `b`.
pub fn compare(a: &[BacktestRow], b: &[BacktestRow]) -> (Vec<Changed>, ChangeSummary) {
    let mut summary = ChangeSummary::default();
    let mut changed = Vec::new();
    for (a, b) in a.iter().zip(b) {
        debug_assert_eq!(a.order_id, b.order_id, "the same orders in the same order");
        if a.decision == b.decision {
            continue;
        }
        let now_promised = b.decision == "promise";
        summary.changed += 1;
        summary.now_promised += u64::from(now_promised);
        summary.now_denied += u64::from(!now_promised);
        let sign = if now_promised { 1 } else { -1 };
        if a.label == 1 {
            summary.net_oversells += sign;
        } else {
            summary.net_false_denies -= sign;
        }
        changed.push(Changed {
            order_id: a.order_id.clone(),
            ts: a.ts,
            sku: a.sku.clone(),
            node: a.node.clone(),
            qty: a.qty,
            decision_a: a.decision,
            decision_b: b.decision,
            p_fulfill_a: a.p_fulfill,
            p_fulfill_b: b.p_fulfill,
            rules_fired_a: a.rules_fired.clone(),
            rules_fired_b: b.rules_fired.clone(),
            label: a.label,
        });
    }
    (changed, summary)
}

/// Writes the orders two configurations decided otherwise as CSV (times in milliseconds).
pub fn write_changes_csv(changed: &[Changed], out: impl Write) -> Result<(), BacktestError> {
    let mut writer = csv::Writer::from_writer(out);
    for row in changed {
        writer.serialize(row)?;
    }
    Ok(writer.flush()?)
}

/// Writes backtest rows as CSV with a header (`ts` in RFC 3339).
pub fn write_csv(rows: &[BacktestRow], out: impl Write) -> Result<(), BacktestError> {
    let mut writer = csv::Writer::from_writer(out);
    let header = ["order_id", "ts", "sku", "node", "region", "qty", "decision", "units", "p_fulfill", "rules_fired", "label"];
    writer.write_record(header)?;
    for row in rows {
        writer
            .write_record([
                row.order_id.clone(),
                sellable_core::event::format_millis(row.ts),
                row.sku.clone(),
                row.node.clone(),
                row.region.clone(),
                row.qty.to_string(),
                row.decision.to_string(),
                row.units.to_string(),
                row.p_fulfill.map(|p| format!("{p:.6}")).unwrap_or_default(),
                row.rules_fired.clone(),
                row.label.to_string(),
            ])?;
    }
    Ok(writer.flush()?)
}
