//! The model's feature vector: one definition, used by serving (live answers) and by the
//! training-set builder (replayed answers), so the two can never compute a feature differently.
//!
//! A vector is the **batch features** of one sku×node as of a batch cutoff (computed by the SQL
//! in `batch/sql/features.sql`, stored in the Lance `features` dataset) followed by the
//! **real-time features**, computed here from the merged state (batch view + speed view) at
//! decision time. Missing values are `NaN` (XGBoost's "missing").
//!
//! The boundary, defined once ([`known_before_decision`]): an answer at decision time `T` sees the
//! events that arrived strictly before `T`. An event arriving exactly at `T` is seen by neither
//! serving nor the training-set replay; an order's own `reserve` (which arrives at or after its
//! `ts`, the decision time) is never in its own features.

use crate::event::{Event, Millis};
use crate::fold::NodeState;
use crate::EventKind;

/// The batch features, in vector order: the columns `batch/sql/features.sql` must produce.
pub const BATCH: [&str; 35] = [
    "on_hand",
    "reserved",
    "held",
    "reserve_units_5m",
    "reserve_count_5m",
    "reserve_units_1h",
    "reserve_count_1h",
    "reserve_units_24h",
    "reserve_count_24h",
    "reserve_units_7d",
    "reserve_count_7d",
    "sku_reserve_units_5m",
    "sku_reserve_count_5m",
    "sku_reserve_units_1h",
    "sku_reserve_count_1h",
    "sku_reserve_units_24h",
    "sku_reserve_count_24h",
    "sku_reserve_units_7d",
    "sku_reserve_count_7d",
    "cancel_rate_7d",
    "return_rate_7d",
    "hours_since_count",
    "hours_since_receipt",
    "hours_since_event",
    "count_bias_30d",
    "count_mae_30d",
    "counts_30d",
    "short_rate_30d",
    "node_short_rate_30d",
    "feed_lag_p50_s",
    "feed_lag_p95_s",
    "feed_reliability_30d",
    "node_is_store",
    "node_is_seller",
    "region_code",
];

/// The real-time features, in vector order, computed by [`realtime`].
pub const REALTIME: [&str; 14] = [
    "order_qty",
    "atp_now",
    "on_hand_now",
    "reserved_now",
    "held_now",
    "qty_over_atp",
    "hours_since_event_now",
    "hours_since_anchor_now",
    "anchor_is_feed",
    "deltas_since_anchor",
    "hour_of_day",
    "day_of_week",
    "velocity_5m",
    "velocity_1h",
];

/// Every feature name, in vector order.
pub fn names() -> Vec<&'static str> {
    BATCH.iter().chain(REALTIME.iter()).copied().collect()
}

/// Where feature `name` sits in the vector, if it is one.
pub fn index(name: &str) -> Option<usize> {
    BATCH.iter().chain(REALTIME.iter()).position(|known| *known == name)
}

/// Whether an answer at decision time `decision` sees `event`: it arrived strictly before.
pub fn known_before_decision(event: &Event, decision: Millis) -> bool {
    event.arrival() < decision
}

const HOUR: f64 = 3_600_000.0;

/// The real-time features of an order of `qty` units at `now`, from the merged state of its
/// sku×node (`None`: nothing known about it).
pub fn realtime(state: Option<&NodeState>, qty: i64, now: Millis) -> [f64; REALTIME.len()] {
    let empty = NodeState::default();
    let state = state.unwrap_or(&empty);
    let atp = state.atp();
    let hours_since = |ts: Option<Millis>| ts.map_or(f64::NAN, |ts| (now - ts) as f64 / HOUR);
    let anchor = state.anchor.as_ref();
    let day = now.div_euclid(86_400_000);
    [
        qty as f64,
        atp as f64,
        state.on_hand() as f64,
        state.reserved as f64,
        state.held as f64,
        qty as f64 / atp.max(1) as f64,
        hours_since(state.last_event_ts),
        hours_since(anchor.map(|anchor| anchor.key.ts)),
        anchor.map_or(f64::NAN, |anchor| if anchor.kind == EventKind::Feed { 1.0 } else { 0.0 }),
        state.deltas.len() as f64,
        (now.rem_euclid(86_400_000) / 3_600_000) as f64,
        // 1970-01-01 was a Thursday: 0 = Monday
        ((day + 3).rem_euclid(7)) as f64,
        state.demand(now, 5) as f64,
        state.demand(now, 60) as f64,
    ]
}

/// The whole vector: batch features (`None`: the sku×node was not in the batch features, so all
/// missing) followed by the real-time ones.
pub fn vector(batch: Option<&[f64]>, state: Option<&NodeState>, qty: i64, now: Millis) -> Vec<f64> {
    let mut vector = Vec::with_capacity(BATCH.len() + REALTIME.len());
    match batch {
        Some(batch) => vector.extend_from_slice(batch),
        None => vector.extend(std::iter::repeat_n(f64::NAN, BATCH.len())),
    }
    vector.extend(realtime(state, qty, now));
    vector
}

/// One training row: an order (a `reserve` with an `order_id`), what became of it, and the
/// feature vector an answer at its time would have used. Built by the batch layer's training-set
/// builder; read by training and by serving's backtests.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainRow {
    pub order_id: String,
    /// The order's time: the decision time.
    pub ts: Millis,
    pub sku: String,
    pub node: String,
    pub qty: i64,
    /// 1: shorted (oversold); 0: shipped.
    pub label: i64,
    /// The batch cutoff whose features the row holds.
    pub cutoff: Millis,
    /// In the order of [`names`].
    pub features: Vec<f64>,
}

/// Where a training set came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// `events` dataset version.
    pub lake_version: u64,
    /// `features` dataset version.
    pub features_version: u64,
    /// The code that computed it: crate version and a fingerprint of the feature definitions.
    pub code_version: String,
}

/// A stored training set, as training reads it: its dataset version, its rows, and what it was
/// computed from (`None` for an empty set).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSet {
    pub version: u64,
    pub rows: Vec<TrainRow>,
    pub lineage: Option<Lineage>,
}

impl TrainRow {
    /// Equal including the bits of every feature (a NaN equals the same NaN).
    pub fn same_bits(&self, other: &TrainRow) -> bool {
        let bits = |row: &TrainRow| row.features.iter().map(|value| value.to_bits()).collect::<Vec<_>>();
        TrainRow { features: Vec::new(), ..self.clone() } == TrainRow { features: Vec::new(), ..other.clone() } && bits(self) == bits(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_the_vector_has_one_value_each() {
        let names = names();
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert_eq!(vector(None, None, 2, 0).len(), names.len());
    }

    #[test]
    fn realtime_features_follow_the_state_and_the_clock() {
        let event = |id: &str, ts, kind, qty| Event {
            event_id: id.into(),
            ts,
            sku: "S".into(),
            node: "N".into(),
            kind,
            qty,
            order_id: None,
            arrived: None,
        };
        let mut state = NodeState::default();
        state.apply(&event("c", 0, EventKind::Count, 10));
        state.apply(&event("r", 1_000, EventKind::Reserve, 3));
        state.apply(&event("s", 2_000, EventKind::Ship, 1));
        // Tuesday 2026-01-06 10:30 UTC
        let now = 1_767_695_400_000;
        let features = realtime(Some(&state), 4, now);
        let named = |name: &str| features[REALTIME.iter().position(|n| *n == name).unwrap()];
        assert_eq!(named("atp_now"), 7.0);
        assert_eq!(named("qty_over_atp"), 4.0 / 7.0);
        assert_eq!(named("deltas_since_anchor"), 1.0);
        assert_eq!(named("anchor_is_feed"), 0.0);
        assert_eq!(named("hour_of_day"), 10.0);
        assert_eq!(named("day_of_week"), 1.0);
        assert!(realtime(None, 1, now)[6].is_nan(), "no event yet: missing, not zero");
    }

    #[test]
    fn an_event_arriving_at_decision_time_is_not_seen() {
        let mut event = Event {
            event_id: "e".into(),
            ts: 5,
            sku: "S".into(),
            node: "N".into(),
            kind: EventKind::Receipt,
            qty: 1,
            order_id: None,
            arrived: Some(10),
        };
        assert!(!known_before_decision(&event, 10));
        assert!(known_before_decision(&event, 11));
        event.arrived = None;
        assert!(!known_before_decision(&event, 5), "arrival defaults to ts");
    }
}
