//! The ATP fold: events → state per sku×node, as a pure function.
//!
//! Two properties make the lambda architecture work, and the property tests in this module
//! prove both:
//! - **idempotent**: an `event_id` seen twice counts once;
//! - **order-insensitive**: any arrival order of the same events gives the same state.
//!
//! Sums (`reserved`, `held`) commute. On-hand does not, because `count` and `feed` set it
//! absolutely: a count at event time T overrides every on-hand change before T, whatever order
//! they arrive in. So a [`NodeState`] keeps the latest absolute reading (its *anchor*, ordered by
//! `(ts, event_id)`) and every on-hand delta ordered after it. Such states also merge exactly
//! ([`NodeState::merge`]), which is how serving combines the batch view with the speed view.
//!
//! Recent demand (reserve units by minute of event time) is a sum too; it is kept for the hour
//! before the newest arrival only, and since that arrival only grows, trimming to it gives the
//! same buckets in any order of arrival.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind, Millis};

/// The total order of events in event time; ties in `ts` are broken by `event_id`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventKey {
    pub ts: Millis,
    pub event_id: String,
}

impl EventKey {
    pub fn of(event: &Event) -> EventKey {
        EventKey { ts: event.ts, event_id: event.event_id.clone() }
    }
}

/// The latest absolute on-hand reading (`count` or `feed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub key: EventKey,
    pub qty: i64,
    pub kind: EventKind,
}

/// How an event changes the state of its sku×node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effect {
    /// Absolute on-hand reading, for `count` and `feed`.
    pub absolute: Option<i64>,
    pub on_hand: i64,
    pub reserved: i64,
    pub held: i64,
}

/// The ATP arithmetic of DESIGN.md, one place for every layer (the batch SQL mirrors it and is
/// tested against it).
pub fn effect(kind: EventKind, qty: i64) -> Effect {
    let none = Effect { absolute: None, on_hand: 0, reserved: 0, held: 0 };
    match kind {
        EventKind::Count | EventKind::Feed => Effect { absolute: Some(qty), ..none },
        EventKind::Receipt | EventKind::Return | EventKind::Adjust => Effect { on_hand: qty, ..none },
        EventKind::Reserve => Effect { reserved: qty, ..none },
        EventKind::Release => Effect { reserved: -qty, ..none },
        EventKind::Ship => Effect { on_hand: -qty, reserved: -qty, ..none },
        // The units were not there: the reservation ends. On-hand is left to the next count
        // (pickers recount after a short), which knows how many units really are there;
        // writing the units off here as well would count the loss twice.
        EventKind::Short => Effect { reserved: -qty, ..none },
        EventKind::Hold => Effect { held: qty, ..none },
        EventKind::Unhold => Effect { held: -qty, ..none },
    }
}

/// State of one sku×node. Merging and applying are both exact: see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub anchor: Option<Anchor>,
    /// On-hand deltas ordered after the anchor (all of them while there is no anchor).
    pub deltas: BTreeMap<EventKey, i64>,
    pub reserved: i64,
    pub held: i64,
    /// Latest event time seen, and latest arrival time seen.
    pub last_event_ts: Option<Millis>,
    pub last_arrived: Option<Millis>,
    /// Reserve units by minute of event time (`ts` div one minute), for the [`DEMAND_MINUTES`]
    /// minutes up to the newest arrival's: the node's recent demand ([`NodeState::demand`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub demand: BTreeMap<Millis, i64>,
}

/// One minute, in milliseconds: the width of a demand bucket.
pub const MINUTE: Millis = 60_000;
/// How many minutes of demand a [`NodeState`] keeps: enough for the last hour at any decision
/// time after its newest arrival.
pub const DEMAND_MINUTES: i64 = 60;

impl NodeState {
    /// Applies one event. The caller deduplicates by `event_id` ([`Fold`] does).
    pub fn apply(&mut self, event: &Event) {
        let change = effect(event.kind, event.qty);
        self.reserved += change.reserved;
        self.held += change.held;
        self.last_event_ts = self.last_event_ts.max(Some(event.ts));
        self.last_arrived = self.last_arrived.max(Some(event.arrival()));
        let key = EventKey::of(event);
        if let Some(qty) = change.absolute {
            self.set_anchor(Anchor { key, qty, kind: event.kind });
        } else if change.on_hand != 0 && self.is_after_anchor(&key) {
            self.deltas.insert(key, change.on_hand);
        }
        if event.kind == EventKind::Reserve {
            *self.demand.entry(event.ts.div_euclid(MINUTE)).or_default() += event.qty;
        }
        self.trim_demand();
    }

    /// Forgets the demand of minutes before the last hour up to the newest arrival.
    fn trim_demand(&mut self) {
        if let (Some(arrived), Some(first)) = (self.last_arrived, self.demand.keys().next()) {
            let floor = arrived.div_euclid(MINUTE) - (DEMAND_MINUTES - 1);
            if *first < floor {
                self.demand = self.demand.split_off(&floor);
            }
        }
    }

    /// Units reserved at the node in the minute of `now` and the `minutes - 1` minutes before it
    /// (by event time; at most [`DEMAND_MINUTES`]): `velocity_5m` and `velocity_1h`.
    pub fn demand(&self, now: Millis, minutes: i64) -> i64 {
        let last = now.div_euclid(MINUTE);
        self.demand.range(last - (minutes.clamp(1, DEMAND_MINUTES) - 1)..=last).map(|(_, units)| units).sum()
    }

    fn is_after_anchor(&self, key: &EventKey) -> bool {
        self.anchor.as_ref().is_none_or(|anchor| *key > anchor.key)
    }

    fn set_anchor(&mut self, anchor: Anchor) {
        if self.is_after_anchor(&anchor.key) {
            self.deltas = self.deltas.split_off(&anchor.key);
            self.deltas.remove(&anchor.key);
            self.anchor = Some(anchor);
        }
    }

    /// On-hand: the anchor's reading plus every change after it.
    pub fn on_hand(&self) -> i64 {
        self.anchor.as_ref().map_or(0, |anchor| anchor.qty) + self.deltas.values().sum::<i64>()
    }

    /// Naive available-to-promise: on-hand − reserved − held, never below zero. A negative
    /// `reserved` or `held` (a `release` folded before its `reserve`) never inflates it.
    pub fn atp(&self) -> i64 {
        (self.on_hand() - self.reserved.max(0) - self.held.max(0)).max(0)
    }

    /// The state of the union of two disjoint event sets (the batch view's and the speed view's).
    pub fn merge(&self, other: &NodeState) -> NodeState {
        let anchor = match (&self.anchor, &other.anchor) {
            (Some(a), Some(b)) => Some(if a.key >= b.key { a.clone() } else { b.clone() }),
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        let mut merged = NodeState {
            anchor,
            deltas: BTreeMap::new(),
            reserved: self.reserved + other.reserved,
            held: self.held + other.held,
            last_event_ts: self.last_event_ts.max(other.last_event_ts),
            last_arrived: self.last_arrived.max(other.last_arrived),
            demand: self.demand.clone(),
        };
        for (key, delta) in self.deltas.iter().chain(&other.deltas) {
            if merged.is_after_anchor(key) {
                merged.deltas.insert(key.clone(), *delta);
            }
        }
        for (minute, units) in &other.demand {
            *merged.demand.entry(*minute).or_default() += units;
        }
        merged.trim_demand();
        merged
    }
}

/// How far after its event time an event may arrive and still be folded, and how long a folded
/// `event_id` is remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldConfig {
    pub lateness_ms: Millis,
    /// The dedup window, in arrival time per SKU: an `event_id` is remembered while it arrived
    /// less than this before the newest arrival folded for its SKU. An event older than that
    /// could be a replay whose first copy is forgotten, so it is refused
    /// ([`Outcome::Expired`]), never counted twice. `None`: remembered for the whole speed view
    /// (until the next batch cutoff starts a new one).
    #[serde(default)]
    pub dedup_window_ms: Option<Millis>,
}

impl Default for FoldConfig {
    fn default() -> FoldConfig {
        FoldConfig { lateness_ms: 6 * 3_600_000, dedup_window_ms: None }
    }
}

impl FoldConfig {
    /// An event that arrived more than the allowed lateness after it happened is not folded:
    /// every layer rejects exactly the same events, so their views agree.
    pub fn is_too_late(&self, event: &Event) -> bool {
        event.arrival() - event.ts > self.lateness_ms
    }
}

/// The one boundary between the batch view and the speed view: the batch view as of `cutoff`
/// holds exactly the events known then (arrived at or before it); the speed view folds the rest.
pub fn known_at(event: &Event, cutoff: Millis) -> bool {
    event.arrival() <= cutoff
}

/// Per node, the latest arrival among `events` that are not too late: how far each node's feed
/// has been folded (its watermark), whatever SKUs the events were about.
pub fn watermarks<'a>(events: impl IntoIterator<Item = &'a Event>, config: FoldConfig) -> BTreeMap<String, Millis> {
    let mut marks: BTreeMap<&str, Millis> = BTreeMap::new();
    for event in events.into_iter().filter(|event| !config.is_too_late(event)) {
        let mark = marks.entry(event.node.as_str()).or_insert(event.arrival());
        *mark = (*mark).max(event.arrival());
    }
    marks.into_iter().map(|(node, arrived)| (node.to_string(), arrived)).collect()
}

/// What folding one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    /// Arrived more than the allowed lateness after it happened: not folded.
    TooLate,
    /// Arrived before the dedup window of its SKU: not folded (see [`FoldConfig`]).
    Expired,
    /// Reuses the `event_id` of an event folded before with different content: not folded, and
    /// the first stays (a client bug or a forgery, never a silent duplicate).
    Conflict,
}

impl Outcome {
    /// Why an event was refused (`None` if it was applied or was a harmless duplicate): the
    /// reason a dead letter carries.
    pub fn refusal(self, event: &Event, config: FoldConfig) -> Option<String> {
        match self {
            Outcome::Applied | Outcome::Duplicate => None,
            Outcome::TooLate => Some(format!(
                "too late: arrived {} ms after it happened (allowed {})",
                event.arrival() - event.ts,
                config.lateness_ms
            )),
            Outcome::Expired => Some(format!(
                "outside the dedup window: arrived more than {} ms before the newest event of sku '{}'",
                config.dedup_window_ms.unwrap_or_default(),
                event.sku
            )),
            Outcome::Conflict => Some(format!(
                "conflict: event_id '{}' of sku '{}' was folded before with different content; this copy is not",
                event.event_id, event.sku
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FoldStats {
    pub applied: u64,
    pub duplicates: u64,
    pub too_late: u64,
    pub expired: u64,
    pub conflicts: u64,
}

impl FoldStats {
    pub fn of(outcomes: &[Outcome]) -> FoldStats {
        let mut stats = FoldStats::default();
        outcomes.iter().for_each(|outcome| stats.count(*outcome));
        stats
    }

    /// Adds another tally to this one.
    pub fn add(&mut self, other: FoldStats) {
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.too_late += other.too_late;
        self.expired += other.expired;
        self.conflicts += other.conflicts;
    }

    pub fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::TooLate => self.too_late += 1,
            Outcome::Expired => self.expired += 1,
            Outcome::Conflict => self.conflicts += 1,
        }
    }
}

/// The `event_id`s folded for one SKU, with their arrival and their content's [`Event::print`],
/// and the newest arrival: what decides whether an event of that SKU is folded
/// ([`SeenIds::admit`]). [`Fold`] keeps one per SKU; the Redis speed view keeps one per SKU too,
/// in the SKU's state when a dedup window bounds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeenIds {
    pub newest: Option<Millis>,
    /// Per id: its arrival and print ([`UNKNOWN_PRINT`] for an id whose content was not kept,
    /// such as one folded into the batch view: any copy of it is then a duplicate).
    pub ids: HashMap<String, (Millis, u32)>,
    /// Size after the last trim: trimming waits until the set has doubled (amortised O(1)).
    trimmed_at: usize,
}

impl SeenIds {
    /// Whether `event` is folded, and if so records its id: too late, outside the dedup window,
    /// a duplicate, a conflict, or applied (the caller then applies it to its node's state).
    pub fn admit(&mut self, event: &Event, config: FoldConfig) -> Outcome {
        let window = config.dedup_window_ms;
        if config.is_too_late(event) {
            Outcome::TooLate
        } else if self.is_expired(event.arrival(), window) {
            Outcome::Expired
        } else {
            self.insert(&event.event_id, event.arrival(), event.print(), window)
        }
    }

    /// Records an id with its print: [`Outcome::Applied`] if it was new, else
    /// [`Outcome::Duplicate`] or, when both prints are known and differ, [`Outcome::Conflict`].
    /// The caller checked the window first, so whether an id older than the window is still in
    /// the map changes no outcome.
    pub fn insert(&mut self, event_id: &str, arrival: Millis, print: u32, window: Option<Millis>) -> Outcome {
        if let Some((_, first)) = self.ids.get(event_id) {
            let known = *first != UNKNOWN_PRINT && print != UNKNOWN_PRINT;
            return if known && *first != print { Outcome::Conflict } else { Outcome::Duplicate };
        }
        self.ids.insert(event_id.to_string(), (arrival, print));
        self.newest = self.newest.max(Some(arrival));
        if let Some(window) = window.filter(|_| self.ids.len() >= 2 * self.trimmed_at.max(1024)) {
            self.trim(window);
        }
        Outcome::Applied
    }

    /// Forgets the ids that arrived before the window (no outcome depends on them any more).
    pub fn trim(&mut self, window: Millis) {
        if let Some(newest) = self.newest {
            self.ids.retain(|_, (arrived, _)| *arrived >= newest - window);
        }
        self.trimmed_at = self.ids.len();
    }

    fn is_expired(&self, arrival: Millis, window: Option<Millis>) -> bool {
        matches!((window, self.newest), (Some(window), Some(newest)) if arrival < newest - window)
    }
}

/// The print of an id whose content is not known ([`SeenIds::ids`]).
pub const UNKNOWN_PRINT: u32 = 0;

pub type SkuNode = (String, String);

/// The reference fold of a whole event stream, in memory: the oracle every other layer is
/// tested against.
#[derive(Debug, Clone, Default)]
pub struct Fold {
    pub config: FoldConfig,
    pub states: BTreeMap<SkuNode, NodeState>,
    /// Folded (or remembered) `event_id`s per SKU.
    seen: HashMap<String, SeenIds>,
    pub stats: FoldStats,
}

impl Fold {
    pub fn new(config: FoldConfig) -> Fold {
        Fold { config, ..Fold::default() }
    }

    pub fn apply(&mut self, event: &Event) -> Outcome {
        let outcome = self.seen.entry(event.sku.clone()).or_default().admit(event, self.config);
        if outcome == Outcome::Applied {
            self.states.entry((event.sku.clone(), event.node.clone())).or_default().apply(event);
        }
        self.stats.count(outcome);
        outcome
    }

    /// Marks an `event_id` of `sku` as folded elsewhere (in the batch view, known at `arrival`),
    /// so a redelivered copy is a duplicate here too.
    pub fn remember(&mut self, sku: &str, event_id: &str, arrival: Millis) {
        let window = self.config.dedup_window_ms;
        self.seen.entry(sku.to_string()).or_default().insert(event_id, arrival, UNKNOWN_PRINT, window);
    }

    /// Whether an event with this id was folded (or remembered) for `sku`.
    pub fn knows(&self, sku: &str, event_id: &str) -> bool {
        self.seen.get(sku).is_some_and(|seen| seen.ids.contains_key(event_id))
    }

    pub fn state(&self, sku: &str, node: &str) -> Option<&NodeState> {
        self.states.get(&(sku.to_string(), node.to_string()))
    }
}

/// The states a batch view holds for `events`: their fold without recent demand, which only the
/// speed view keeps (it starts again at each cutoff).
pub fn batch_states<'a>(events: impl IntoIterator<Item = &'a Event>, config: FoldConfig) -> BTreeMap<SkuNode, NodeState> {
    let mut states = fold(events, config).states;
    states.values_mut().for_each(|state| state.demand.clear());
    states
}

/// Folds a whole stream with the given config.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>, config: FoldConfig) -> Fold {
    let mut fold = Fold::new(config);
    for event in events {
        fold.apply(event);
    }
    fold
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(id: u32, ts: i64, node: u8, kind: EventKind, qty: i64) -> Event {
        Event {
            event_id: format!("e{id:05}"),
            ts,
            sku: "S".into(),
            node: format!("N{node}"),
            kind,
            qty,
            order_id: None,
            arrived: Some(ts),
        }
    }

    fn arb_kind() -> impl Strategy<Value = EventKind> {
        prop::sample::select(EventKind::ALL.to_vec())
    }

    /// Streams with few distinct timestamps, so ties in `ts` (broken by `event_id`) are common,
    /// spread over more than two hours, so demand older than the last hour is forgotten.
    fn arb_events() -> impl Strategy<Value = Vec<Event>> {
        prop::collection::vec((0..20i64, 0..2u8, arb_kind(), 0..10i64), 0..40).prop_map(|rows| {
            rows.into_iter()
                .enumerate()
                .map(|(id, (ts, node, kind, qty))| {
                    let qty = if kind == EventKind::Adjust { qty - 5 } else { qty };
                    event(id as u32, ts * 7 * MINUTE + ts % 3, node, kind, qty)
                })
                .collect()
        })
    }

    fn states(events: &[Event]) -> BTreeMap<SkuNode, NodeState> {
        fold(events, FoldConfig::default()).states
    }

    /// The definition the incremental fold must agree with: the last absolute reading in event
    /// order, plus every on-hand change after it.
    fn on_hand_by_definition(events: &[Event], node: &str) -> i64 {
        let mut sorted: Vec<&Event> = events.iter().filter(|e| e.node == node).collect();
        sorted.sort_by_key(|e| EventKey::of(e));
        sorted.iter().fold(0, |on_hand, e| {
            let change = effect(e.kind, e.qty);
            change.absolute.unwrap_or(on_hand + change.on_hand)
        })
    }

    proptest! {
        #[test]
        fn demand_matches_event_time_definition(events in arb_events(), after in 0..90 * MINUTE, minutes in 1..=DEMAND_MINUTES) {
            let folded = states(&events);
            for ((_, node), state) in &folded {
                let now = state.last_arrived.unwrap() + after;
                let last = now.div_euclid(MINUTE);
                let expected: i64 = events
                    .iter()
                    .filter(|e| &e.node == node && e.kind == EventKind::Reserve)
                    .filter(|e| (last - minutes + 1..=last).contains(&e.ts.div_euclid(MINUTE)))
                    .map(|e| e.qty)
                    .sum();
                prop_assert_eq!(state.demand(now, minutes), expected);
            }
        }

        #[test]
        fn fold_is_insensitive_to_arrival_order(events in arb_events(), seed in any::<u64>()) {
            let mut shuffled = events.clone();
            // a deterministic permutation from the seed
            let mut state = seed | 1;
            for index in (1..shuffled.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                shuffled.swap(index, (state % (index as u64 + 1)) as usize);
            }
            prop_assert_eq!(states(&events), states(&shuffled));
        }

        #[test]
        fn fold_is_idempotent(events in arb_events(), repeat in 0usize..40) {
            let mut replayed = events.clone();
            replayed.extend(events.iter().take(repeat).cloned());
            replayed.extend(events.iter().cloned());
            prop_assert_eq!(states(&events), states(&replayed));
        }

        #[test]
        fn on_hand_matches_event_time_definition(events in arb_events()) {
            let folded = states(&events);
            for ((_, node), state) in &folded {
                prop_assert_eq!(state.on_hand(), on_hand_by_definition(&events, node));
            }
        }

        #[test]
        fn merge_of_a_split_equals_the_whole(events in arb_events(), split in 0usize..40) {
            let split = split.min(events.len());
            let (first, second) = events.split_at(split);
            let (whole, first, second) = (states(&events), states(first), states(second));
            for (key, state) in &whole {
                let empty = NodeState::default();
                let merged = first.get(key).unwrap_or(&empty).merge(second.get(key).unwrap_or(&empty));
                prop_assert_eq!(merged.on_hand(), state.on_hand());
                prop_assert_eq!(merged.atp(), state.atp());
                prop_assert_eq!(&merged, state);
            }
        }
    }

    #[test]
    fn late_count_overrides_earlier_changes_only() {
        let events = [
            event(1, 10, 0, EventKind::Receipt, 5),
            event(2, 30, 0, EventKind::Ship, 2),
            // arrives last, happened between the two: the receipt is inside it, the ship is not
            event(3, 20, 0, EventKind::Count, 7),
        ];
        let fold = fold(&events, FoldConfig::default());
        assert_eq!(fold.state("S", "N0").unwrap().on_hand(), 5);
    }

    #[test]
    fn short_after_late_count_is_not_double_counted() {
        let events = [
            event(1, 10, 0, EventKind::Count, 4),
            event(2, 11, 0, EventKind::Reserve, 3),
            event(3, 30, 0, EventKind::Short, 3),
            // the recount that found the units missing happened before the short was recorded
            event(4, 20, 0, EventKind::Count, 1),
        ];
        let state = fold(&events, FoldConfig::default()).state("S", "N0").unwrap().clone();
        assert_eq!((state.on_hand(), state.reserved, state.atp()), (1, 0, 1));
    }

    #[test]
    fn replays_older_than_the_dedup_window_are_refused_not_counted_twice() {
        let config = FoldConfig { dedup_window_ms: Some(100), ..FoldConfig::default() };
        let mut fold = Fold::new(config);
        let first = event(1, 0, 0, EventKind::Receipt, 5);
        let mut newer = event(2, 500, 0, EventKind::Receipt, 1);
        newer.arrived = Some(500);
        assert_eq!(fold.apply(&first), Outcome::Applied);
        assert_eq!(fold.apply(&first), Outcome::Duplicate, "within the window: deduplicated");
        assert_eq!(fold.apply(&newer), Outcome::Applied);
        // the newest arrival is now 500: a copy of `first` (arrived 0) may have been forgotten
        assert_eq!(fold.apply(&first), Outcome::Expired);
        let mut just_inside = event(3, 400, 0, EventKind::Receipt, 2);
        just_inside.arrived = Some(400);
        assert_eq!(fold.apply(&just_inside), Outcome::Applied);
        assert_eq!(fold.state("S", "N0").unwrap().on_hand(), 8);
        assert_eq!((fold.stats.applied, fold.stats.duplicates, fold.stats.expired), (3, 1, 1));
        let reason = Outcome::Expired.refusal(&first, config).unwrap();
        assert!(reason.contains("dedup window") && reason.contains("'S'"), "{reason}");
    }

    #[test]
    fn a_reused_event_id_with_other_content_is_a_conflict_and_changes_nothing() {
        let mut fold = Fold::new(FoldConfig::default());
        let first = event(1, 10, 0, EventKind::Receipt, 5);
        let mut retry = first.clone();
        retry.arrived = Some(99);
        let mut forged = first.clone();
        forged.qty = 500_000;
        assert_eq!(fold.apply(&first), Outcome::Applied);
        assert_eq!(fold.apply(&retry), Outcome::Duplicate, "a copy that arrived later is the same event");
        assert_eq!(fold.apply(&forged), Outcome::Conflict);
        assert_eq!(fold.state("S", "N0").unwrap().on_hand(), 5);
        assert_eq!((fold.stats.applied, fold.stats.duplicates, fold.stats.conflicts), (1, 1, 1));
        let reason = Outcome::Conflict.refusal(&forged, fold.config).unwrap();
        assert!(reason.contains("conflict") && reason.contains("e00001"), "{reason}");
        // an id remembered without its content (folded into the batch view) is a duplicate
        fold.remember("S", "e00009", 10);
        assert_eq!(fold.apply(&event(9, 10, 0, EventKind::Receipt, 7)), Outcome::Duplicate);
    }

    #[test]
    fn too_late_events_are_not_folded() {
        let mut late = event(1, 0, 0, EventKind::Receipt, 5);
        late.arrived = Some(FoldConfig::default().lateness_ms + 1);
        let mut fold = Fold::new(FoldConfig::default());
        assert_eq!(fold.apply(&late), Outcome::TooLate);
        assert_eq!(fold.stats.too_late, 1);
        assert!(fold.states.is_empty());
    }
}
