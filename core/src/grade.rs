//! Grades: how current the inputs of an answer are, and what each fallback may promise.
//!
//! The normal answer merges the batch view with the speed view. When the speed view cannot be
//! read, or cannot be trusted (it came back empty, or was built for another cutoff), the answer
//! falls back to the batch view alone — but never promises what may have left since the cutoff:
//! [`conservative_atp`] takes off an upper bound of the units that could have been reserved,
//! held, shipped or written off since then ([`outflow_bound`]).
//!
//! The bound rests on one stated assumption: a node's outflow since the cutoff is at most
//! [`OUTFLOW_SAFETY`] times its peak demand rate before the cutoff (the batch features' reserved
//! units over 5 minutes, 1 hour, 24 hours and 7 days, per hour), plus one unit. A count or feed
//! after the cutoff that finds fewer units than recorded is not bounded by it (the stale-feed
//! rule and the model cover that). The property test below checks that under this assumption the
//! fallback never promises more than the fresh answer would.

use serde::{Deserialize, Serialize};

use crate::features::BATCH;
use crate::fold::NodeState;
use crate::event::Millis;

/// How current an answer's inputs are, from best to worst.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Grade {
    /// Batch view and speed view both current: the exact merged state.
    #[default]
    Fresh,
    /// Current, with a known staleness answered by a wider margin (a feed beyond its SLA, a
    /// batch view older than expected).
    BoundedStale,
    /// The speed view could not be used: the batch view minus what could have left since its
    /// cutoff.
    Conservative,
    /// Nothing current enough to promise from.
    Unavailable,
}

impl Grade {
    pub fn as_str(self) -> &'static str {
        match self {
            Grade::Fresh => "fresh",
            Grade::BoundedStale => "bounded_stale",
            Grade::Conservative => "conservative",
            Grade::Unavailable => "unavailable",
        }
    }
}

/// How many times its peak demand rate a node is assumed to lose at most since the cutoff.
pub const OUTFLOW_SAFETY: f64 = 2.0;

const HOUR_MS: f64 = 3_600_000.0;

/// The highest demand rate (units reserved per hour) of a sku×node's batch features, over the
/// windows they hold; `None` when the features are missing.
pub fn peak_outflow_per_hour(batch_features: &[f64]) -> Option<f64> {
    let windows = [("reserve_units_5m", 1.0 / 12.0), ("reserve_units_1h", 1.0), ("reserve_units_24h", 24.0), ("reserve_units_7d", 168.0)];
    let mut peak: Option<f64> = None;
    for (name, hours) in windows {
        let index = BATCH.iter().position(|feature| *feature == name).expect("a batch feature of core; this is a bug");
        let units = *batch_features.get(index)?;
        if !units.is_finite() {
            return None;
        }
        peak = Some(peak.unwrap_or(0.0).max(units.max(0.0) / hours));
    }
    peak
}

/// Units that may have left a sku×node's ATP between `cutoff` and `now`: `None` when nothing
/// bounds them (no batch features).
pub fn outflow_bound(batch_features: Option<&[f64]>, cutoff: Millis, now: Millis) -> Option<i64> {
    if now <= cutoff {
        return Some(0);
    }
    let peak = peak_outflow_per_hour(batch_features?)?;
    let hours = (now - cutoff) as f64 / HOUR_MS;
    Some((OUTFLOW_SAFETY * peak * hours).ceil() as i64 + 1)
}

/// What a node may promise from the batch view alone at `now`: its ATP at the cutoff minus the
/// outflow bound, never below zero; nothing when no bound is known.
pub fn conservative_atp(batch: &NodeState, batch_features: Option<&[f64]>, cutoff: Millis, now: Millis) -> i64 {
    match outflow_bound(batch_features, cutoff, now) {
        Some(bound) => (batch.atp() - bound).max(0),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, EventKind};
    use proptest::prelude::*;

    fn features(units_1h: f64, units_7d: f64) -> Vec<f64> {
        let mut features = vec![0.0; BATCH.len()];
        let set = |features: &mut Vec<f64>, name: &str, value: f64| features[BATCH.iter().position(|n| *n == name).unwrap()] = value;
        set(&mut features, "reserve_units_1h", units_1h);
        set(&mut features, "reserve_units_7d", units_7d);
        features
    }

    fn event(id: usize, ts: Millis, kind: EventKind, qty: i64) -> Event {
        Event { event_id: format!("e{id}"), ts, sku: "S".into(), node: "N".into(), kind, qty, order_id: None, arrived: Some(ts) }
    }

    #[test]
    fn the_bound_grows_with_the_peak_rate_and_the_time_since_the_cutoff() {
        let hour = HOUR_MS as Millis;
        assert_eq!(outflow_bound(Some(&features(3.0, 0.0)), 0, 0), Some(0));
        // 3 units in the last hour: 2 × 3 × 2 h + 1
        assert_eq!(outflow_bound(Some(&features(3.0, 0.0)), 0, 2 * hour), Some(13));
        // 336 units over 7 days is 2 per hour, less than 3 in the last hour
        assert_eq!(outflow_bound(Some(&features(3.0, 336.0)), 0, hour), Some(7));
        assert_eq!(outflow_bound(None, 0, hour), None);
        assert_eq!(outflow_bound(Some(&[f64::NAN; BATCH.len()]), 0, hour), None);
        let stocked = crate::fold(&[event(1, 0, EventKind::Count, 20)], crate::FoldConfig::default()).states;
        let state = stocked.values().next().unwrap();
        assert_eq!(conservative_atp(state, Some(&features(3.0, 0.0)), 0, 2 * hour), 7);
        assert_eq!(conservative_atp(state, None, 0, 2 * hour), 0, "no bound known: nothing");
    }

    /// Events after the cutoff of any kind but `count` and `feed`, each an outflow (reserve,
    /// hold, ship, a negative adjust) or not.
    fn arb_after() -> impl Strategy<Value = Vec<(i64, EventKind, i64)>> {
        let kinds: Vec<EventKind> = EventKind::ALL.into_iter().filter(|kind| !matches!(kind, EventKind::Count | EventKind::Feed)).collect();
        prop::collection::vec((0..200i64, prop::sample::select(kinds), 0..8i64), 0..30)
    }

    fn outflow(kind: EventKind, qty: i64) -> i64 {
        match kind {
            EventKind::Reserve | EventKind::Hold | EventKind::Ship => qty,
            EventKind::Adjust => (-qty).max(0),
            _ => 0,
        }
    }

    proptest! {
        /// Under the bound's assumption (the outflow since the cutoff is within the bound), the
        /// fallback never promises more than the fresh answer at the same instant.
        #[test]
        fn the_conservative_answer_never_promises_more_than_the_fresh_one(
            before in prop::collection::vec((0..100i64, prop::sample::select(EventKind::ALL.to_vec()), 0..30i64), 0..30),
            after in arb_after(),
            units_1h in 0.0..20.0f64,
            units_7d in 0.0..500.0f64,
            minutes in 0..3_000i64,
        ) {
            let cutoff = 100;
            let now = cutoff + minutes * 60_000;
            let features = features(units_1h, units_7d);
            let bound = outflow_bound(Some(&features), cutoff, now).unwrap();
            let batch: Vec<Event> = before.iter().enumerate().map(|(id, (ts, kind, qty))| {
                let qty = if *kind == EventKind::Adjust { qty - 15 } else { *qty };
                event(id, *ts, *kind, qty)
            }).collect();
            // the speed view's events, as long as their outflow stays within the bound
            let mut spent = 0;
            let mut speed = Vec::new();
            for (id, (ts, kind, qty)) in after.iter().enumerate() {
                let qty = if *kind == EventKind::Adjust { qty - 4 } else { *qty };
                spent += outflow(*kind, qty);
                if spent > bound {
                    break;
                }
                // late events may carry a time before the cutoff
                speed.push(event(1_000 + id, *ts, *kind, qty));
            }
            let config = crate::FoldConfig::default();
            let batch_state = crate::fold(&batch, config).states.into_values().next().unwrap_or_default();
            let speed_state = crate::fold(&speed, config).states.into_values().next().unwrap_or_default();
            let fresh = batch_state.merge(&speed_state).atp();
            prop_assert!(conservative_atp(&batch_state, Some(&features), cutoff, now) <= fresh);
        }
    }
}
