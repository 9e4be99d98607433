//! sellable-core: the domain every layer shares — the event schema and its decoders, the
//! catalog, the ATP fold and the decision arithmetic. Pure: it knows nothing about Redis,
//! DataFusion or HTTP, and does no IO beyond decoding readers it is handed.
//!
//! Tests live beside the code (`#[cfg(test)]`), including the property tests of the fold.

pub mod catalog;
pub mod decision;
pub mod decisions;
pub mod door;
pub mod event;
pub mod features;
pub mod fold;
pub mod grade;
pub mod holds;
pub mod lane;
pub mod view;

pub use catalog::{NodeInfo, NodeKind, SkuInfo};
pub use decision::{decide, Decision, FulfillmentOption, Verdict};
pub use decisions::{DecisionRecord, DecisionStore};
pub use door::{Door, KnownIds, Refusal};
pub use event::{DecodeError, Event, EventKind, Millis};
pub use grade::Grade;
pub use fold::{fold, known_at, Fold, FoldConfig, FoldStats, NodeState, Outcome, SeenIds};
pub use view::{merge_views, Ahead, BatchMeta, BatchView, Moment, DeadLetter, EventArchive, EventIntake, EventLog, SkuRead, SkuRow, SpeedSource, ViewError, Watermarks};
