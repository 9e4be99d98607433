//! Backtests: what the engine would have decided for every order of a past period, with a model
//! version and a rule set, beside what really happened and what the baselines would have done.
//!
//! Each order is decided by [`Serving::decide_at_node`], the very function live answers use, from
//! the order's replayed feature vector (the training-set builder's, itself computed by the
//! serving code path): the model's score gates the node, then the rules apply.

use std::collections::HashMap;
use std::io::Write;

use sellable_core::features::TrainRow;
use sellable_core::{Millis, SkuInfo};
use sellable_models::Model;

use crate::{NodeFacts, Serving};

/// Why a backtest stopped.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("order {order_id}: unknown node '{node}'")]
    UnknownNode { order_id: String, node: String },
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
    pub qty: i64,
    /// `promise` or `deny`.
    pub decision: &'static str,
    pub units: i64,
    pub p_fulfill: Option<f64>,
    /// Names of the rules that fired, `;`-separated.
    pub rules_fired: String,
    pub label: i64,
}

/// Oversells caught and orders wrongly denied, by the engine and by the baselines.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct BacktestSummary {
    pub orders: u64,
    pub shorted: u64,
    pub engine: PolicyCounts,
    pub naive_atp: PolicyCounts,
    /// Promise iff ATP ≥ qty + `safety_stock`.
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

impl Serving {
    /// Decides every order as the engine would have at its time. Orders at nodes the catalog
    /// does not know are an error naming them.
    pub fn backtest(
        &self,
        skus: &HashMap<String, SkuInfo>,
        model: Option<&Model>,
        orders: &[TrainRow],
        safety_stock: i64,
    ) -> Result<(Vec<BacktestRow>, BacktestSummary), BacktestError> {
        let ruleset = self.rules.current();
        let names = sellable_core::features::names();
        let position = |name: &str| names.iter().position(|n| *n == name).expect("a real-time feature of core; this is a bug");
        let [atp, on_hand, reserved, held, since_event, velocity_5m, velocity_1h] =
            ["atp_now", "on_hand_now", "reserved_now", "held_now", "hours_since_event_now", "velocity_5m", "velocity_1h"].map(position);
        let mut rows = Vec::with_capacity(orders.len());
        let mut summary = BacktestSummary { safety_stock, ..BacktestSummary::default() };
        for order in orders {
            let _order = tracing::debug_span!("order", order_id = ?order.order_id, sku = ?order.sku, node = ?order.node).entered();
            let unknown = || BacktestError::UnknownNode { order_id: order.order_id.clone(), node: order.node.clone() };
            let node = self.nodes.get(&order.node).ok_or_else(unknown)?;
            let value = |at: usize| order.features.get(at).copied().unwrap_or(f64::NAN);
            let hours_since_event = value(since_event);
            let facts = NodeFacts {
                atp: value(atp) as i64,
                on_hand: value(on_hand) as i64,
                reserved: value(reserved) as i64,
                held: value(held) as i64,
                feed_lag_s: hours_since_event.is_finite().then_some(hours_since_event * 3600.0),
                velocity_5m: value(velocity_5m) as i64,
                velocity_1h: value(velocity_1h) as i64,
                p_fulfill: model.map(|model| model.p_fulfill(&order.features)),
                margin: 0,
            };
            let decision = self.decide_at_node(ruleset.as_deref(), model, skus.get(&order.sku), &node.region, order.qty, node, &facts);
            let promised = decision.units >= order.qty;
            let shorted = order.label == 1;
            summary.orders += 1;
            summary.shorted += u64::from(shorted);
            summary.engine.add(promised, shorted);
            summary.naive_atp.add(facts.atp >= order.qty, shorted);
            summary.static_safety_stock.add(facts.atp >= order.qty + safety_stock, shorted);
            rows.push(BacktestRow {
                order_id: order.order_id.clone(),
                ts: order.ts,
                sku: order.sku.clone(),
                node: order.node.clone(),
                qty: order.qty,
                decision: if promised { "promise" } else { "deny" },
                units: if promised { order.qty } else { 0 },
                p_fulfill: facts.p_fulfill,
                rules_fired: decision.fired.iter().map(|fired| fired.rule.as_str()).collect::<Vec<_>>().join(";"),
                label: order.label,
            });
        }
        Ok((rows, summary))
    }
}

/// Writes backtest rows as CSV with a header (`ts` in RFC 3339).
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

pub fn write_csv(rows: &[BacktestRow], out: impl Write) -> Result<(), BacktestError> {
    let mut writer = csv::Writer::from_writer(out);
    let header = ["order_id", "ts", "sku", "node", "qty", "decision", "units", "p_fulfill", "rules_fired", "label"];
    writer.write_record(header)?;
    for row in rows {
        writer
            .write_record([
                row.order_id.clone(),
                sellable_core::event::format_millis(row.ts),
                row.sku.clone(),
                row.node.clone(),
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
