//! The door: what the platform checks of an event when it accepts it from a client (`POST
//! /v1/events`, a stream entry), before anything folds it. A client's times and names are not
//! taken on trust:
//! - `POST /v1/events` stamps `arrived` itself ([`Door::stamp`]): a client's value is dropped, so
//!   lateness and watermarks rest on the platform's clock;
//! - a time beyond the platform's clock plus [`Door::max_skew_ms`] is refused (a count dated
//!   9999-12-31 would otherwise pin a node's stock and silence its stale-feed check for good);
//! - an event for a SKU or node the catalog does not know is refused (it would be stored for
//!   nothing, and each unknown node would add a metric series).
//!
//! A refused event is dead-lettered with the reason and counted by whoever calls the door.

use std::collections::HashSet;

use crate::event::{Event, Millis};

/// The SKUs and nodes of the catalog, as the door checks them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownIds {
    pub skus: HashSet<String>,
    pub nodes: HashSet<String>,
}

impl KnownIds {
    pub fn of(skus: &[crate::SkuInfo], nodes: &[crate::NodeInfo]) -> KnownIds {
        KnownIds { skus: skus.iter().map(|sku| sku.sku.clone()).collect(), nodes: nodes.iter().map(|node| node.node.clone()).collect() }
    }
}

/// Why the door refused an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("from the future: {field} {time} is {ahead} ms past the platform's clock (allowed {skew})")]
    FromTheFuture { field: &'static str, time: Millis, ahead: Millis, skew: Millis },
    #[error("unknown sku '{0}': not in the catalog")]
    UnknownSku(String),
    #[error("unknown node '{0}': not in the catalog")]
    UnknownNode(String),
}

impl Refusal {
    /// The metric label of the refusal.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::FromTheFuture { .. } => "future",
            Refusal::UnknownSku(_) | Refusal::UnknownNode(_) => "unknown",
        }
    }
}

/// The checks of the door, with the platform's allowance for clocks that run ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Door<'a> {
    /// How far past the platform's clock an event's time may be (node clocks drift).
    pub max_skew_ms: Millis,
    /// The catalog to check names against; `None` checks no names.
    pub known: Option<&'a KnownIds>,
}

/// Default allowance for node clocks ahead of the platform's.
pub const DEFAULT_MAX_SKEW_MS: Millis = 60_000;

impl Door<'_> {
    /// The platform's acceptance time becomes the event's arrival.
    pub fn stamp(event: &mut Event, now: Millis) {
        event.arrived = Some(now);
    }

    /// Checks an event accepted at `now`.
    pub fn check(&self, event: &Event, now: Millis) -> Result<(), Refusal> {
        for (field, time) in [("ts", Some(event.ts)), ("arrived", event.arrived)] {
            if let Some(time) = time.filter(|time| *time > now + self.max_skew_ms) {
                return Err(Refusal::FromTheFuture { field, time, ahead: time - now, skew: self.max_skew_ms });
            }
        }
        if let Some(known) = self.known {
            if !known.skus.contains(&event.sku) {
                return Err(Refusal::UnknownSku(event.sku.clone()));
            }
            if !known.nodes.contains(&event.node) {
                return Err(Refusal::UnknownNode(event.node.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventKind;

    #[test]
    fn future_times_and_unknown_names_are_refused_with_the_reason() {
        let known = KnownIds { skus: ["S".to_string()].into(), nodes: ["N".to_string()].into() };
        let door = Door { max_skew_ms: 1_000, known: Some(&known) };
        let event = |ts, sku: &str, node: &str| Event { event_id: "e".into(), ts, sku: sku.into(), node: node.into(), kind: EventKind::Count, qty: 1, order_id: None, arrived: None };
        let now = 10_000;
        assert_eq!(door.check(&event(11_000, "S", "N"), now), Ok(()));
        assert_eq!(door.check(&event(11_001, "S", "N"), now).unwrap_err().to_string(), "from the future: ts 11001 is 1001 ms past the platform's clock (allowed 1000)");
        let dated = Event { arrived: Some(253_402_214_400_000), ..event(5_000, "S", "N") };
        assert_eq!(door.check(&dated, now).unwrap_err().label(), "future");
        assert_eq!(door.check(&event(5_000, "T", "N"), now), Err(Refusal::UnknownSku("T".into())));
        assert_eq!(door.check(&event(5_000, "S", "WH-7"), now).unwrap_err().to_string(), "unknown node 'WH-7': not in the catalog");
        assert_eq!(Door { known: None, ..door }.check(&event(5_000, "T", "M"), now), Ok(()));
        let mut stamped = Event { arrived: Some(1), ..event(5_000, "S", "N") };
        Door::stamp(&mut stamped, now);
        assert_eq!(stamped.arrived, Some(now));
    }
}
