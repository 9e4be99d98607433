//! The two views serving merges, and the pure merge itself. The batch layer produces a
//! [`BatchView`] and implements [`EventLog`]; the speed layer implements [`SpeedSource`]; serving
//! and the speed layer's catch-up only see these types, so the three layers never depend on each
//! other.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::catalog::SkuInfo;
use crate::event::Millis;
use crate::fold::{NodeState, SkuNode};

/// The batch view: state per sku×node of every event known at `asof`.
#[derive(Debug, Clone, Default)]
pub struct BatchView {
    /// Names the dataset version that produced it, for `versions` in every answer.
    pub version: String,
    pub asof: Millis,
    pub states: BTreeMap<SkuNode, NodeState>,
    /// The batch features as of `asof` per sku×node, in the order of
    /// [`crate::features::BATCH`] (empty when the feature store has none for this cutoff).
    pub features: std::collections::HashMap<SkuNode, Vec<f64>>,
}

/// What serving keeps of a batch view: its name, its cutoff and its node watermarks. The rows
/// themselves are published beside the epoch's speed view ([`SkuRow`], [`SpeedSource::sku_read`])
/// and read per request, so a serving process's memory does not grow with the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchMeta {
    pub version: String,
    pub asof: Millis,
    /// Per node, the latest arrival the view holds.
    pub watermarks: BTreeMap<String, Millis>,
}

/// What serving answered an order from at a past instant, as a replay of the lake rebuilds it
/// (the batch layer's `replay_orders`), for backtests that decide as live answers do: the SKU's
/// batch states as of a cutoff at or before the one in force, its speed states since (merged,
/// they are the state at the instant whatever that cutoff), the batch features of the cutoff in
/// force, and per node of the SKU the newest arrival serving knew of.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Moment {
    /// The batch cutoff in force: the last before the instant.
    pub cutoff: Millis,
    /// Ordered by node.
    pub states: Vec<(String, NodeState)>,
    pub speed: Vec<(String, NodeState)>,
    pub features: Vec<(String, Vec<f64>)>,
    pub watermarks: BTreeMap<String, Millis>,
}

/// One SKU of a published batch view: its catalog entry, the batch state of every node that
/// stocks it, and the batch features of each sku×node the feature store has.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SkuRow {
    pub info: SkuInfo,
    /// Ordered by node.
    pub states: Vec<(String, NodeState)>,
    /// Ordered by node, in the order of [`crate::features::BATCH`].
    pub features: Vec<(String, Vec<f64>)>,
}

impl SkuRow {
    /// The batch features of `node`, if the feature store has them.
    pub fn features_of(&self, node: &str) -> Option<&[f64]> {
        self.features.iter().find(|(name, _)| name == node).map(|(_, features)| features.as_slice())
    }

    /// The batch states, as [`merge_views`] takes them.
    pub fn states(&self) -> impl Iterator<Item = (&str, &NodeState)> {
        self.states.iter().map(|(node, state)| (node.as_str(), state))
    }
}

impl BatchView {
    pub fn meta(&self) -> BatchMeta {
        BatchMeta { version: self.version.clone(), asof: self.asof, watermarks: self.watermarks() }
    }

    /// One row per SKU of the catalog `skus` (a SKU with no state has an empty row), in the
    /// order of `skus`: what an epoch publishes. The view's states and features move into the
    /// rows, which are made one at a time as they are taken.
    pub fn into_rows(self, skus: Vec<SkuInfo>) -> Rows {
        type ByNode<T> = std::collections::HashMap<String, Vec<(String, T)>>;
        let mut states: ByNode<NodeState> = ByNode::new();
        for ((sku, node), state) in self.states {
            states.entry(sku).or_default().push((node, state));
        }
        let mut features: ByNode<Vec<f64>> = ByNode::new();
        for ((sku, node), values) in self.features {
            features.entry(sku).or_default().push((node, values));
        }
        Box::new(skus.into_iter().map(move |info| {
            let mut features = features.remove(&info.sku).unwrap_or_default();
            features.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(SkuRow { states: states.remove(&info.sku).unwrap_or_default(), info, features })
        }))
    }

    /// [`BatchView::into_rows`] of a copy.
    pub fn rows(&self, skus: &[SkuInfo]) -> Rows {
        self.clone().into_rows(skus.to_vec())
    }

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

/// How far each feed has been folded: per node and per ingestion source (`stream:<name>`,
/// `http`, `file:<path>`), the latest arrival folded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermarks {
    pub nodes: BTreeMap<String, Millis>,
    pub sources: BTreeMap<String, Millis>,
}

/// Where accepted events are kept for good (the lake), as an archiver writes to it: in batches,
/// each recorded together with the position it reached in its source, so that after a crash the
/// archiver resumes exactly after what was written (a replayed batch adds nothing).
pub trait EventArchive: Send + Sync {
    /// The position last recorded under `key` (a stream's last archived entry id), if any.
    fn position<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, ViewError>>;

    /// Appends `events` and records `position` under `key`, atomically: both or neither.
    fn append_at<'a>(&'a self, events: &'a [crate::Event], key: &'a str, position: &'a str) -> BoxFuture<'a, Result<(), ViewError>>;
}

/// Where the platform appends the events it accepted (a Redis Stream), so that every consumer of
/// them (the fold workers, the archiver) sees each one: the one ingestion path.
pub trait EventIntake: Send + Sync {
    /// Appends `events`, in order; all of them or an error.
    fn append<'a>(&'a self, events: &'a [crate::Event]) -> BoxFuture<'a, Result<(), ViewError>>;

    /// Where it appends, for logs.
    fn describe(&self) -> String;
}

/// Input that was refused, kept with its raw payload and the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetter {
    /// The id the dead-letter place gave it (empty until it is written).
    pub id: String,
    /// Where it came from: a stream entry id, `http item 3`, `events.jsonl line 7`.
    pub entry: String,
    pub raw: String,
    pub error: String,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A failure of a view's store (Redis, the lake), kept whole with its sources: `core` knows
/// nothing of the stores, so their own error types travel boxed.
pub type ViewError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The events the lake holds, as the speed layer needs them to start at a batch cutoff: which
/// events arrived in a window (their ids, so a redelivered copy is a duplicate), and every event
/// that arrived after the cutoff.
pub trait EventLog: Send + Sync {
    /// `(sku, event_id)` of every event that arrived in `(from, to]`.
    fn ids_arrived(&self, from: Millis, to: Millis) -> BoxFuture<'_, Result<Vec<(String, String)>, ViewError>>;

    /// Every event that arrived after `cutoff`, in arrival order; a row that does not decode is
    /// an error naming the row and field, not a failure of the whole read.
    fn events_after(&self, cutoff: Millis) -> BoxFuture<'_, Result<Vec<Result<crate::Event, crate::DecodeError>>, ViewError>>;
}

/// A published batch view's rows, made as they are taken.
///
/// A view streamed from its store yields an error where it could not be read further (the
/// publication then fails instead of publishing part of the view); its iterator may block while
/// the next rows are read, so async callers take rows off their runtime (`spawn_blocking`).
pub type Rows = Box<dyn Iterator<Item = Result<SkuRow, ViewError>> + Send>;

/// Hash fields another store keeps on a single Redis server (`server`, its URL), to be read
/// ahead of a [`SpeedSource`]'s SKUs in one ordered round trip when the speed view is on that
/// server too ([`SpeedSource::sku_reads_after`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ahead {
    pub server: String,
    /// `(key, field)` of each hash field.
    pub fields: Vec<(String, String)>,
}

/// What [`SpeedSource::sku_reads_after`] read: the values of the fields read ahead, then the SKUs'
/// reads.
pub type ReadsAfter = (Vec<Option<String>>, Vec<SkuRead>);

/// What serving reads of one SKU in one round trip: its row of the epoch's batch view (`None`:
/// not published, an unknown SKU when the view is complete), the speed view's states (by node)
/// and the cutoff the view was caught up from, if known.
#[derive(Debug, Clone, Default)]
pub struct SkuRead {
    pub row: Option<Arc<SkuRow>>,
    pub speed: Vec<(String, NodeState)>,
    pub caught_up: Option<Millis>,
}

/// An epoch's store as serving reads it, wherever it lives: the speed view, and beside it the
/// batch view's rows and metadata that the epoch published ([`BatchMeta`], [`SkuRow`]).
pub trait SpeedSource: Send + Sync {
    /// Per node and per source, the latest arrival folded: how far behind each feed is.
    fn watermarks(&self) -> BoxFuture<'_, Result<Watermarks, ViewError>>;

    /// Folds events that came from `source` into it (`POST /v1/events`): atomic per event and
    /// idempotent. One outcome per event, in order.
    fn fold<'a>(&'a self, events: &'a [crate::Event], source: &'a str) -> BoxFuture<'a, Result<Vec<crate::Outcome>, ViewError>>;

    /// Keeps refused input (malformed, too late, expired) where `sellable deadletters` finds it.
    fn dead_letter<'a>(&'a self, letters: &'a [DeadLetter]) -> BoxFuture<'a, Result<(), ViewError>>;

    /// The batch cutoff the view was caught up from (every event of the lake that arrived after
    /// it is in), or `None` when it is not known to be complete: never caught up, or its store
    /// lost what it held (Redis restarted empty). Serving trusts the view only when this is the
    /// cutoff of the batch view it merges it with.
    fn caught_up_to(&self) -> BoxFuture<'_, Result<Option<Millis>, ViewError>>;

    /// The SKU's published batch row, its speed states and the catch-up mark, read together, so
    /// that an answer never merges states the view was not complete for (a store that came back
    /// empty between two checks).
    fn sku_read<'a>(&'a self, sku: &'a str) -> BoxFuture<'a, Result<SkuRead, ViewError>>;

    /// [`SpeedSource::sku_read`] of several SKUs at once, in order: one round trip where the
    /// store can (a listing page's batch).
    fn sku_reads<'a>(&'a self, skus: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<SkuRead>, ViewError>> {
        Box::pin(read_each(self, skus))
    }

    /// [`SpeedSource::sku_reads`] by a reader that has some of the SKUs' rows already (an epoch's
    /// published rows do not change while it is served): where `have[i]`, the store need not
    /// send `skus[i]`'s row, and the read's `row` is `None` or the row, whichever is cheaper for
    /// it. The speed states and the catch-up mark are read for every SKU, as always.
    fn sku_reads_having<'a>(&'a self, skus: &'a [&'a str], have: &'a [bool]) -> BoxFuture<'a, Result<Vec<SkuRead>, ViewError>> {
        let _ = have;
        self.sku_reads(skus)
    }

    /// The one Redis server it is on (its URL), if it is on one server: fields another store
    /// keeps there can be read ahead of its SKUs in one round trip ([`SpeedSource::sku_reads_after`]).
    fn server(&self) -> Option<&str> {
        None
    }

    /// [`SpeedSource::sku_reads_having`], with `ahead`'s fields read first in the same round
    /// trip, so that every value of `ahead` is from before the SKUs were read (the `Vec` of
    /// values, in order, `None` for a field not set). `None` when the store cannot keep that
    /// order: it is not the one server `ahead` names ([`SpeedSource::server`]); the caller then
    /// reads the fields itself, before the SKUs.
    fn sku_reads_after<'a>(&'a self, ahead: &'a Ahead, skus: &'a [&'a str], have: &'a [bool]) -> BoxFuture<'a, Result<Option<ReadsAfter>, ViewError>> {
        let _ = (ahead, skus, have);
        Box::pin(async { Ok(None) })
    }

    /// The metadata of the batch view published beside the speed view, if one is.
    fn batch_meta(&self) -> BoxFuture<'_, Result<Option<BatchMeta>, ViewError>>;

    /// Whether each SKU has a row in the published batch view (is in the epoch's catalog).
    fn skus_known<'a>(&'a self, skus: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<bool>, ViewError>>;

    /// Whether each event's id was folded (or remembered) already for its SKU, in order; stores
    /// that cannot tell say `false` (not known).
    fn known<'a>(&'a self, events: &'a [crate::Event]) -> BoxFuture<'a, Result<Vec<bool>, ViewError>> {
        Box::pin(async move { Ok(vec![false; events.len()]) })
    }

    /// Where it lives, for logs and answers.
    fn describe(&self) -> String;

    /// The lateness and dedup window it folds with.
    fn config(&self) -> crate::FoldConfig;
}

/// [`SpeedSource::sku_read`] of each SKU in turn: [`SpeedSource::sku_reads`] for a store that
/// cannot read several at once.
pub async fn read_each<S: SpeedSource + ?Sized>(source: &S, skus: &[&str]) -> Result<Vec<SkuRead>, ViewError> {
    let mut reads = Vec::with_capacity(skus.len());
    for sku in skus {
        reads.push(source.sku_read(sku).await?);
    }
    Ok(reads)
}

/// Merges the batch and speed states of one SKU into one state per node (exact: see
/// [`NodeState::merge`]), ordered by node. A SKU has a few nodes: a sorted vector, searched by
/// halves, costs less to build than a map (a batch of answers builds one per item).
pub fn merge_views<'a>(
    batch: impl IntoIterator<Item = (&'a str, &'a NodeState)>,
    speed: impl IntoIterator<Item = &'a (String, NodeState)>,
) -> Vec<(&'a str, std::borrow::Cow<'a, NodeState>)> {
    use std::borrow::Cow;
    // a node only one view has is that view's state, borrowed, not copied
    let mut merged: Vec<(&str, Cow<'a, NodeState>)> = batch.into_iter().map(|(node, state)| (node, Cow::Borrowed(state))).collect();
    // a batch row is ordered by node already; any other order is sorted, and of a node given
    // twice the last state is kept
    if !merged.is_sorted_by(|a, b| a.0 < b.0) {
        merged.sort_by(|a, b| a.0.cmp(b.0));
        merged.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
    }
    for (node, state) in speed {
        match merged.binary_search_by(|(at, _)| (*at).cmp(node.as_str())) {
            Ok(at) => {
                let state = merged[at].1.merge(state);
                merged[at].1 = Cow::Owned(state);
            }
            Err(at) => merged.insert(at, (node.as_str(), Cow::Owned(NodeState::default().merge(state)))),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A state told apart by its numbers.
    fn state(reserved: i64, held: i64) -> NodeState {
        NodeState { reserved, held, last_arrived: Some(reserved * 1_000 + held), ..NodeState::default() }
    }

    proptest! {
        /// The merge is the map of every node, the batch's state (the last given for a node) merged
        /// with each of the speed view's in turn, ordered by node, whatever order either view is in.
        #[test]
        fn merged_views_are_every_node_merged_once_in_order(
            batch in proptest::collection::vec((0u8..6, 0i64..50, 0i64..50), 0..8),
            speed in proptest::collection::vec((0u8..6, 0i64..50, 0i64..50), 0..8),
            sorted in any::<bool>(),
        ) {
            let mut batch: Vec<(String, NodeState)> = batch.into_iter().map(|(node, r, h)| (format!("N{node}"), state(r, h))).collect();
            if sorted {
                batch.sort_by(|a, b| a.0.cmp(&b.0));
                batch.dedup_by(|a, b| a.0 == b.0);
            }
            let speed: Vec<(String, NodeState)> = speed.into_iter().map(|(node, r, h)| (format!("N{node}"), state(r, h))).collect();
            let mut expected: BTreeMap<&str, NodeState> = batch.iter().map(|(node, state)| (node.as_str(), state.clone())).collect();
            for (node, state) in &speed {
                let merged = expected.get(node.as_str()).cloned().unwrap_or_default().merge(state);
                expected.insert(node.as_str(), merged);
            }
            let merged = merge_views(batch.iter().map(|(node, state)| (node.as_str(), state)), &speed);
            let merged: Vec<(&str, NodeState)> = merged.into_iter().map(|(node, state)| (node, state.into_owned())).collect();
            prop_assert_eq!(merged, expected.into_iter().collect::<Vec<_>>());
        }
    }
}
