//! The two views serving merges, and the pure merge itself. The batch layer produces a
//! [`BatchView`]; the speed layer implements [`SpeedSource`]; serving only sees these types, so
//! the three layers never depend on each other.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use crate::event::Millis;
use crate::fold::{NodeState, SkuNode};

/// The batch view: state per sku×node of every event known at `asof`.
#[derive(Debug, Clone, Default)]
pub struct BatchView {
    /// Names the dataset version that produced it, for `versions` in every answer.
    pub version: String,
    pub asof: Millis,
    pub states: BTreeMap<SkuNode, NodeState>,
}

impl BatchView {
    /// Per node, the latest arrival the view holds.
    pub fn watermarks(&self) -> BTreeMap<String, Millis> {
        let mut marks: BTreeMap<String, Millis> = BTreeMap::new();
        for ((_, node), state) in &self.states {
            if let Some(arrived) = state.last_arrived {
                let mark = marks.entry(node.clone()).or_insert(arrived);
                *mark = (*mark).max(arrived);
            }
        }
        marks
    }

    /// The states of every node stocking `sku`, ordered by node.
    pub fn sku_states<'a>(&'a self, sku: &'a str) -> impl Iterator<Item = (&'a str, &'a NodeState)> + 'a {
        self.states
            .range((sku.to_string(), String::new())..)
            .take_while(move |((state_sku, _), _)| state_sku == sku)
            .map(|((_, node), state)| (node.as_str(), state))
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A speed view serving can read, wherever it lives.
pub trait SpeedSource: Send + Sync {
    /// The state of every node with events for `sku` since the cutoff, ordered by node.
    fn sku_states<'a>(&'a self, sku: &'a str) -> BoxFuture<'a, Result<Vec<(String, NodeState)>, String>>;

    /// Per node, the latest arrival folded: how far behind each node's feed is.
    fn watermarks(&self) -> BoxFuture<'_, Result<BTreeMap<String, Millis>, String>>;

    /// Folds events into it (`POST /v1/events`): atomic per event and idempotent.
    fn fold<'a>(&'a self, events: &'a [crate::Event]) -> BoxFuture<'a, Result<crate::FoldStats, String>>;

    /// Where it lives, for logs and answers.
    fn describe(&self) -> String;
}

/// Merges the batch and speed states of one SKU into one state per node (exact: see
/// [`NodeState::merge`]).
pub fn merge_views<'a>(
    batch: impl IntoIterator<Item = (&'a str, &'a NodeState)>,
    speed: &'a [(String, NodeState)],
) -> BTreeMap<&'a str, NodeState> {
    let mut merged: BTreeMap<&str, NodeState> =
        batch.into_iter().map(|(node, state)| (node, state.clone())).collect();
    for (node, state) in speed {
        let entry = merged.entry(node.as_str()).or_default();
        *entry = entry.merge(state);
    }
    merged
}
