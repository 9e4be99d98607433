//! The state of one SKU as the Redis speed view stores it: every node's [`NodeState`], plus,
//! when a dedup window bounds them, the SKU's folded event ids ([`SeenIds`]). One value per SKU,
//! in a compact binary encoding, so one fold writes a SKU with one hash field whatever it did.
//!
//! Encoding (integers little-endian, strings as a `u32` length then UTF-8 bytes, an absent
//! time as `i64::MIN`): version byte `1`; `newest`; node count, then per node its name,
//! `reserved`, `held`, `last_ts`, `last_arrived`, anchor flag (`0`/`1`) and when set the anchor's
//! `ts`, `event_id`, `qty` and kind, then the delta count and per delta `ts`, `event_id`, delta;
//! last the id count and per id the id and its arrival.

use std::collections::BTreeMap;

use sellable_core::fold::{Anchor, EventKey};
use sellable_core::{Event, EventKind, FoldConfig, Millis, NodeState, Outcome, SeenIds};

const VERSION: u8 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkuState {
    pub nodes: BTreeMap<String, NodeState>,
    /// With a dedup window: the ids folded within it. Without one the ids live in a set beside
    /// the states, and this holds only those known to be folded while a batch is applied.
    pub seen: SeenIds,
}

impl SkuState {
    /// Folds one event, exactly as `core`'s [`sellable_core::Fold::apply`] does.
    pub fn apply(&mut self, event: &Event, config: FoldConfig) -> Outcome {
        let outcome = self.seen.admit(event, config);
        if outcome == Outcome::Applied {
            match self.nodes.get_mut(&event.node) {
                Some(node) => node.apply(event),
                None => self.nodes.entry(event.node.clone()).or_default().apply(event),
            }
        }
        outcome
    }

    /// The stored form; empty when there is nothing to keep. The ids are kept only with a
    /// dedup window, trimmed to it.
    pub fn encode(&self, window: Option<Millis>) -> Vec<u8> {
        let ids: Vec<(&String, &Millis)> = match window {
            Some(window) => {
                let floor = self.seen.newest.map_or(Millis::MIN, |newest| newest - window);
                let mut ids: Vec<_> = self.seen.ids.iter().filter(|(_, arrived)| **arrived >= floor).collect();
                ids.sort();
                ids
            }
            None => Vec::new(),
        };
        if self.nodes.is_empty() && ids.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(64 + 64 * self.nodes.len());
        out.push(VERSION);
        put_time(&mut out, if window.is_some() { self.seen.newest } else { None });
        put_len(&mut out, self.nodes.len());
        for (node, state) in &self.nodes {
            put_str(&mut out, node);
            put_i64(&mut out, state.reserved);
            put_i64(&mut out, state.held);
            put_time(&mut out, state.last_event_ts);
            put_time(&mut out, state.last_arrived);
            match &state.anchor {
                None => out.push(0),
                Some(anchor) => {
                    out.push(1);
                    put_i64(&mut out, anchor.key.ts);
                    put_str(&mut out, &anchor.key.event_id);
                    put_i64(&mut out, anchor.qty);
                    put_str(&mut out, anchor.kind.as_str());
                }
            }
            put_len(&mut out, state.deltas.len());
            for (key, delta) in &state.deltas {
                put_i64(&mut out, key.ts);
                put_str(&mut out, &key.event_id);
                put_i64(&mut out, *delta);
            }
        }
        put_len(&mut out, ids.len());
        for (id, arrived) in ids {
            put_str(&mut out, id);
            put_i64(&mut out, *arrived);
        }
        out
    }

    /// Reads the stored form back (empty: a SKU with no state). The error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<SkuState, String> {
        let mut state = SkuState::default();
        if bytes.is_empty() {
            return Ok(state);
        }
        let mut reader = Reader { bytes, at: 0 };
        let version = reader.byte()?;
        if version != VERSION {
            return Err(format!("unknown encoding version {version} (this build reads {VERSION})"));
        }
        state.seen.newest = reader.time()?;
        for _ in 0..reader.len()? {
            let node = reader.string()?;
            let mut node_state = NodeState {
                reserved: reader.i64()?,
                held: reader.i64()?,
                last_event_ts: reader.time()?,
                last_arrived: reader.time()?,
                ..NodeState::default()
            };
            if reader.byte()? == 1 {
                let key = EventKey { ts: reader.i64()?, event_id: reader.string()? };
                let qty = reader.i64()?;
                let kind_text = reader.string()?;
                let kind = EventKind::parse(&kind_text).ok_or_else(|| format!("node {node}: anchor kind '{kind_text}'"))?;
                node_state.anchor = Some(Anchor { key, qty, kind });
            }
            for _ in 0..reader.len()? {
                let key = EventKey { ts: reader.i64()?, event_id: reader.string()? };
                node_state.deltas.insert(key, reader.i64()?);
            }
            state.nodes.insert(node, node_state);
        }
        for _ in 0..reader.len()? {
            let id = reader.string()?;
            state.seen.ids.insert(id, reader.i64()?);
        }
        if reader.at != bytes.len() {
            return Err(format!("{} bytes left over after the state", bytes.len() - reader.at));
        }
        Ok(state)
    }
}

fn put_i64(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_time(out: &mut Vec<u8>, value: Option<Millis>) {
    put_i64(out, value.unwrap_or(Millis::MIN));
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u32::try_from(len).expect("a SKU state holds fewer than 2^32 items").to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_len(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated at byte {} (wanted {n} more of {})", self.at, self.bytes.len()))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn time(&mut self) -> Result<Option<Millis>, String> {
        Ok(Some(self.i64()?).filter(|value| *value != Millis::MIN))
    }

    fn len(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize)
    }

    fn string(&mut self) -> Result<String, String> {
        let at = self.at;
        let len = self.len()?;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| format!("string at byte {at} is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sellable_core::fold;

    fn event(id: &str, ts: Millis, node: &str, kind: EventKind, qty: i64) -> Event {
        Event { event_id: id.into(), ts, sku: "S".into(), node: node.into(), kind, qty, order_id: None, arrived: Some(ts + 5) }
    }

    fn events() -> Vec<Event> {
        vec![
            event("a", 10, "N1", EventKind::Receipt, 5),
            event("b", 20, "N1", EventKind::Count, 9),
            event("c", 30, "N1", EventKind::Return, 2),
            event("d", 15, "N2", EventKind::Reserve, 3),
            event("e", 16, "N2", EventKind::Hold, 1),
            event("a", 10, "N1", EventKind::Receipt, 5),
        ]
    }

    #[test]
    fn applying_equals_cores_fold_and_survives_encoding_at_every_step() {
        for window in [None, Some(12)] {
            let config = FoldConfig { dedup_window_ms: window, ..FoldConfig::default() };
            let mut state = SkuState::default();
            let mut outcomes = Vec::new();
            for event in events() {
                // every event starts from the stored form, as a fold of one event per batch does;
                // without a window the ids are kept beside it (the partition's id set)
                let ids = state.seen.clone();
                state = SkuState::decode(&state.encode(window)).unwrap();
                if window.is_none() {
                    state.seen = ids;
                }
                outcomes.push(state.apply(&event, config));
            }
            let oracle = fold(&events(), config);
            let expected: BTreeMap<String, NodeState> = oracle.states.iter().map(|((_, node), state)| (node.clone(), state.clone())).collect();
            assert_eq!(state.nodes, expected, "window {window:?}");
            assert_eq!(SkuState::decode(&state.encode(window)).unwrap().nodes, expected);
            let applied = outcomes.iter().filter(|outcome| **outcome == Outcome::Applied).count() as u64;
            assert_eq!(applied, oracle.stats.applied, "window {window:?}: {outcomes:?}");
        }
    }

    #[test]
    fn the_ids_are_kept_only_with_a_window_and_trimmed_to_it() {
        let config = FoldConfig { dedup_window_ms: Some(12), ..FoldConfig::default() };
        let mut state = SkuState::default();
        events().iter().for_each(|event| {
            state.apply(event, config);
        });
        let kept = SkuState::decode(&state.encode(Some(12))).unwrap().seen;
        // newest arrival 35: ids that arrived before 23 are forgotten
        let mut ids: Vec<&str> = kept.ids.keys().map(String::as_str).collect();
        ids.sort();
        assert_eq!((ids, kept.newest), (vec!["b", "c"], Some(35)));
        assert!(SkuState::decode(&state.encode(None)).unwrap().seen.ids.is_empty());
        assert!(SkuState::default().encode(None).is_empty());
    }

    #[test]
    fn corrupt_bytes_are_an_error_never_a_panic() {
        let config = FoldConfig::default();
        let mut state = SkuState::default();
        events().iter().for_each(|event| {
            state.apply(event, config);
        });
        let bytes = state.encode(None);
        for cut in 1..bytes.len() {
            assert!(SkuState::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(SkuState::decode(&longer).unwrap_err().contains("left over"));
        assert!(SkuState::decode(&[9]).unwrap_err().contains("version 9"));
        let mut huge = bytes;
        huge[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(SkuState::decode(&huge).is_err());
    }
}
