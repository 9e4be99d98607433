//! The state of one SKU as the Redis speed view stores it: every node's [`NodeState`], plus,
//! when a dedup window bounds them, the SKU's folded event ids ([`SeenIds`]). One value per SKU,
//! in a compact binary encoding, so one fold writes a SKU with one hash field whatever it did.
//!
//! Encoding, version 4 (integers as LEB128 varints, signed ones zigzagged; a string as its
//! length then its UTF-8 bytes; an id as the length of the prefix it shares with the id before
//! it, then the rest as a string; every time as its difference to `base`, a delta's time to the
//! delta's before it; every operation wrapping, so any `i64` comes back as it was):
//! version byte `4`; `base`; presence flags (bit 0: `newest`) and `newest`; node count, then per
//! node its name, `reserved`, `held`, presence flags (bit 0 `last_ts`, bit 1 `last_arrived`,
//! bit 2 anchor), those present, the anchor as `ts`, `event_id`, `qty` and kind (its index in
//! [`EventKind::ALL`]), then the delta count and per delta `ts`, `event_id` and the delta, then
//! the demand's minute count and per minute the minute (as its difference to the one before, the
//! first to `base`'s minute) and the units; last the id count and per id (in order) the id, its arrival and its content's print
//! ([`Event::print`], 4 bytes little-endian). About two fifths of version 1's size (113 against
//! 288 bytes per SKU on `speed.sh`'s workload), which a write sends whole. Versions 3 (the same
//! without demand: read as none), 2 (without demand or prints: read as prints not known) and 1 (fixed-width little-endian integers, `u32`
//! lengths, the kind by name) are still read.

use std::collections::BTreeMap;

use sellable_core::fold::{Anchor, EventKey, MINUTE, UNKNOWN_PRINT};
use sellable_core::{Event, EventKind, FoldConfig, Millis, NodeState, Outcome, SeenIds, SkuInfo, SkuRow};

const VERSION: u8 = 4;

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
        let ids: Vec<(&String, &(Millis, u32))> = match window {
            Some(window) => {
                let floor = self.seen.newest.map_or(Millis::MIN, |newest| newest - window);
                let mut ids: Vec<_> = self.seen.ids.iter().filter(|(_, (arrived, _))| *arrived >= floor).collect();
                ids.sort();
                ids
            }
            None => Vec::new(),
        };
        if self.nodes.is_empty() && ids.is_empty() {
            return Vec::new();
        }
        let base = self.nodes.values().find_map(|node| node.last_arrived.or(node.last_event_ts)).unwrap_or(0);
        let newest = if window.is_some() { self.seen.newest } else { None };
        let mut out = Writer { out: Vec::with_capacity(32 + 48 * self.nodes.len()), base, last_id: "" };
        out.out.push(VERSION);
        out.signed(base);
        out.flags(&[newest.is_some()]);
        newest.into_iter().for_each(|newest| out.time(newest));
        out.unsigned(self.nodes.len() as u64);
        for (node, state) in &self.nodes {
            out.string(node);
            out.signed(state.reserved);
            out.signed(state.held);
            out.flags(&[state.last_event_ts.is_some(), state.last_arrived.is_some(), state.anchor.is_some()]);
            state.last_event_ts.into_iter().chain(state.last_arrived).for_each(|time| out.time(time));
            if let Some(anchor) = &state.anchor {
                out.time(anchor.key.ts);
                out.id(&anchor.key.event_id);
                out.signed(anchor.qty);
                out.out.push(EventKind::ALL.iter().position(|kind| *kind == anchor.kind).expect("every kind is in ALL") as u8);
            }
            out.unsigned(state.deltas.len() as u64);
            let mut previous = base;
            for (key, delta) in &state.deltas {
                out.signed(key.ts.wrapping_sub(previous));
                previous = key.ts;
                out.id(&key.event_id);
                out.signed(*delta);
            }
            out.unsigned(state.demand.len() as u64);
            let mut previous = base.div_euclid(MINUTE);
            for (minute, units) in &state.demand {
                out.signed(minute.wrapping_sub(previous));
                previous = *minute;
                out.signed(*units);
            }
        }
        out.unsigned(ids.len() as u64);
        for (id, (arrived, print)) in ids {
            out.id(id);
            out.time(*arrived);
            out.out.extend_from_slice(&print.to_le_bytes());
        }
        out.out
    }

    /// Reads the stored form back (empty: a SKU with no state). The error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<SkuState, String> {
        if bytes.is_empty() {
            return Ok(SkuState::default());
        }
        let mut reader = Reader { bytes, at: 1, base: 0, last_id: Vec::new() };
        let state = match bytes[0] {
            1 => reader.version_1()?,
            2 => reader.varints(false, false)?,
            3 => reader.varints(true, false)?,
            VERSION => reader.varints(true, true)?,
            version => return Err(format!("unknown encoding version {version} (this build reads 1 to {VERSION})")),
        };
        if reader.at != bytes.len() {
            return Err(format!("{} bytes left over after the state", bytes.len() - reader.at));
        }
        Ok(state)
    }
}

/// Version of a published batch row's encoding ([`encode_row`]).
const ROW_VERSION: u8 = 1;

/// The stored form of a SKU's row of a published batch view: version byte `1`; the catalog entry
/// (the SKU, the category, presence flags (bit 0 seller, bit 1 hazmat), the seller if present,
/// the price as 8 bytes little-endian, the attributes); the length of the states' encoding, then
/// the states as [`SkuState::encode`] writes them (no ids); the count of nodes with features,
/// then per node its name, the count of features and each as 8 bytes little-endian.
pub fn encode_row(row: &SkuRow) -> Vec<u8> {
    let mut out = Writer { out: Vec::with_capacity(64 + 64 * row.states.len() + 80 * row.features.len()), base: 0, last_id: "" };
    out.out.push(ROW_VERSION);
    let info = &row.info;
    out.string(&info.sku);
    out.string(&info.category);
    out.flags(&[info.seller.is_some(), info.hazmat]);
    if let Some(seller) = &info.seller {
        out.string(seller);
    }
    out.out.extend_from_slice(&info.price.to_le_bytes());
    out.string(&info.attributes);
    let states = SkuState { nodes: row.states.iter().cloned().collect(), seen: SeenIds::default() }.encode(None);
    out.unsigned(states.len() as u64);
    out.out.extend_from_slice(&states);
    out.unsigned(row.features.len() as u64);
    for (node, features) in &row.features {
        out.string(node);
        out.unsigned(features.len() as u64);
        for value in features {
            out.out.extend_from_slice(&value.to_le_bytes());
        }
    }
    out.out
}

/// Reads a published batch row back ([`encode_row`]). The error says what is wrong.
pub fn decode_row(bytes: &[u8]) -> Result<SkuRow, String> {
    let mut reader = Reader { bytes, at: 1, base: 0, last_id: Vec::new() };
    match bytes.first() {
        Some(&ROW_VERSION) => {}
        Some(version) => return Err(format!("unknown row encoding version {version} (this build reads {ROW_VERSION})")),
        None => return Err("empty row".to_string()),
    }
    let (sku, category) = (reader.string()?, reader.string()?);
    let [has_seller, hazmat] = reader.flags()?;
    let seller = has_seller.then(|| reader.string()).transpose()?;
    let price = reader.f64()?;
    let info = SkuInfo { sku, category, seller, hazmat, price, attributes: reader.string()? };
    let at = reader.at;
    let len = usize::try_from(reader.unsigned()?).map_err(|_| format!("length at byte {at}"))?;
    let states = SkuState::decode(reader.take(len)?).map_err(|message| format!("states at byte {at}: {message}"))?;
    let mut features = Vec::new();
    for _ in 0..reader.unsigned()? {
        let node = reader.string()?;
        let at = reader.at;
        let bytes = usize::try_from(reader.unsigned()?).ok().and_then(|count| count.checked_mul(8)).ok_or_else(|| format!("feature count at byte {at}"))?;
        // all of a node's features at once: one allocation of the right size
        let values = reader.take(bytes)?.chunks_exact(8).map(|value| f64::from_le_bytes(value.try_into().expect("8 bytes"))).collect();
        features.push((node, values));
    }
    if reader.at != bytes.len() {
        return Err(format!("{} bytes left over after the row", bytes.len() - reader.at));
    }
    Ok(SkuRow { info, states: states.nodes.into_iter().collect(), features })
}

/// Writes version 3 (see the module docs).
struct Writer<'a> {
    out: Vec<u8>,
    base: Millis,
    last_id: &'a str,
}

impl<'a> Writer<'a> {
    fn unsigned(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.out.push(value as u8 | 0x80);
            value >>= 7;
        }
        self.out.push(value as u8);
    }

    fn signed(&mut self, value: i64) {
        self.unsigned(((value << 1) ^ (value >> 63)) as u64);
    }

    fn time(&mut self, time: Millis) {
        self.signed(time.wrapping_sub(self.base));
    }

    fn flags(&mut self, flags: &[bool]) {
        self.out.push(flags.iter().enumerate().fold(0, |byte, (bit, set)| byte | (u8::from(*set) << bit)));
    }

    fn string(&mut self, text: &str) {
        self.unsigned(text.len() as u64);
        self.out.extend_from_slice(text.as_bytes());
    }

    fn id(&mut self, id: &'a str) {
        let shared = id.bytes().zip(self.last_id.bytes()).take_while(|(a, b)| a == b).count();
        self.unsigned(shared as u64);
        self.unsigned((id.len() - shared) as u64);
        self.out.extend_from_slice(&id.as_bytes()[shared..]);
        self.last_id = id;
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    base: Millis,
    last_id: Vec<u8>,
}

impl Reader<'_> {
    /// Versions 2 to 4 (`prints`: the ids carry their prints; `demand`: the nodes their demand).
    fn varints(&mut self, prints: bool, demand: bool) -> Result<SkuState, String> {
        let mut state = SkuState::default();
        self.base = self.signed()?;
        let [newest] = self.flags()?;
        state.seen.newest = self.time_if(newest)?;
        for _ in 0..self.unsigned()? {
            let node = self.string()?;
            let (reserved, held) = (self.signed()?, self.signed()?);
            let [last_ts, last_arrived, anchor] = self.flags()?;
            let mut node_state =
                NodeState { reserved, held, last_event_ts: self.time_if(last_ts)?, last_arrived: self.time_if(last_arrived)?, ..NodeState::default() };
            if anchor {
                let key = EventKey { ts: self.time()?, event_id: self.id()? };
                let qty = self.signed()?;
                let at = self.at;
                let kind = *EventKind::ALL.get(usize::from(self.byte()?)).ok_or_else(|| format!("node {node}: anchor kind at byte {at}"))?;
                node_state.anchor = Some(Anchor { key, qty, kind });
            }
            let mut previous = self.base;
            for _ in 0..self.unsigned()? {
                let ts = previous.wrapping_add(self.signed()?);
                previous = ts;
                let key = EventKey { ts, event_id: self.id()? };
                node_state.deltas.insert(key, self.signed()?);
            }
            let mut previous = self.base.div_euclid(MINUTE);
            for _ in 0..if demand { self.unsigned()? } else { 0 } {
                let minute = previous.wrapping_add(self.signed()?);
                previous = minute;
                node_state.demand.insert(minute, self.signed()?);
            }
            state.nodes.insert(node, node_state);
        }
        for _ in 0..self.unsigned()? {
            let id = self.id()?;
            let arrived = self.time()?;
            let print = if prints { u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) } else { UNKNOWN_PRINT };
            state.seen.ids.insert(id, (arrived, print));
        }
        Ok(state)
    }

    fn version_1(&mut self) -> Result<SkuState, String> {
        let mut state = SkuState::default();
        state.seen.newest = self.fixed_time()?;
        for _ in 0..self.fixed_len()? {
            let node = self.fixed_string()?;
            let mut node_state = NodeState {
                reserved: self.fixed_i64()?,
                held: self.fixed_i64()?,
                last_event_ts: self.fixed_time()?,
                last_arrived: self.fixed_time()?,
                ..NodeState::default()
            };
            if self.byte()? == 1 {
                let key = EventKey { ts: self.fixed_i64()?, event_id: self.fixed_string()? };
                let qty = self.fixed_i64()?;
                let kind_text = self.fixed_string()?;
                let kind = EventKind::parse(&kind_text).ok_or_else(|| format!("node {node}: anchor kind '{kind_text}'"))?;
                node_state.anchor = Some(Anchor { key, qty, kind });
            }
            for _ in 0..self.fixed_len()? {
                let key = EventKey { ts: self.fixed_i64()?, event_id: self.fixed_string()? };
                node_state.deltas.insert(key, self.fixed_i64()?);
            }
            state.nodes.insert(node, node_state);
        }
        for _ in 0..self.fixed_len()? {
            let id = self.fixed_string()?;
            state.seen.ids.insert(id, (self.fixed_i64()?, UNKNOWN_PRINT));
        }
        Ok(state)
    }

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

    fn f64(&mut self) -> Result<f64, String> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn unsigned(&mut self) -> Result<u64, String> {
        let at = self.at;
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(format!("varint at byte {at} runs past 10 bytes"))
    }

    fn signed(&mut self) -> Result<i64, String> {
        let zigzag = self.unsigned()?;
        Ok((zigzag >> 1) as i64 ^ -((zigzag & 1) as i64))
    }

    fn time(&mut self) -> Result<Millis, String> {
        Ok(self.base.wrapping_add(self.signed()?))
    }

    fn time_if(&mut self, present: bool) -> Result<Option<Millis>, String> {
        present.then(|| self.time()).transpose()
    }

    fn flags<const N: usize>(&mut self) -> Result<[bool; N], String> {
        let at = self.at;
        let byte = self.byte()?;
        if u32::from(byte) >> N != 0 {
            return Err(format!("flags at byte {at}: unknown bits in {byte:#010b}"));
        }
        Ok(std::array::from_fn(|bit| byte & (1 << bit) != 0))
    }

    fn utf8(at: usize, bytes: Vec<u8>) -> Result<String, String> {
        String::from_utf8(bytes).map_err(|_| format!("string at byte {at} is not UTF-8"))
    }

    fn string(&mut self) -> Result<String, String> {
        let at = self.at;
        let len = usize::try_from(self.unsigned()?).map_err(|_| format!("length at byte {at}"))?;
        Self::utf8(at, self.take(len)?.to_vec())
    }

    fn id(&mut self) -> Result<String, String> {
        let at = self.at;
        let shared = usize::try_from(self.unsigned()?).ok().filter(|shared| *shared <= self.last_id.len());
        let shared = shared.ok_or_else(|| format!("id at byte {at} shares more than the id before it"))?;
        let len = usize::try_from(self.unsigned()?).map_err(|_| format!("length at byte {at}"))?;
        let start = self.at;
        self.take(len)?;
        self.last_id.truncate(shared);
        self.last_id.extend_from_slice(&self.bytes[start..self.at]);
        Self::utf8(at, self.last_id.clone())
    }

    fn fixed_i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn fixed_time(&mut self) -> Result<Option<Millis>, String> {
        Ok(Some(self.fixed_i64()?).filter(|value| *value != Millis::MIN))
    }

    fn fixed_len(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize)
    }

    fn fixed_string(&mut self) -> Result<String, String> {
        let at = self.at;
        let len = self.fixed_len()?;
        Self::utf8(at, self.take(len)?.to_vec())
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
        // a node count far beyond the bytes there are
        let mut huge = vec![VERSION, 0, 0];
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(SkuState::decode(&huge).unwrap_err().contains("truncated"));
        assert!(SkuState::decode(&[VERSION, 0, 0b1000]).unwrap_err().contains("unknown bits"));
        assert!(SkuState::decode(&[VERSION, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).unwrap_err().contains("past 10 bytes"));
    }

    #[test]
    fn extreme_values_and_ids_sharing_part_of_a_character_come_back_as_they_were() {
        let node = |anchor_ts: Millis, ids: &[(&str, Millis, i64)]| NodeState {
            anchor: Some(Anchor { key: EventKey { ts: anchor_ts, event_id: "é1".into() }, qty: i64::MIN, kind: EventKind::Unhold }),
            deltas: ids.iter().map(|(id, ts, delta)| (EventKey { ts: *ts, event_id: id.to_string() }, *delta)).collect(),
            reserved: i64::MAX,
            held: -7,
            last_event_ts: Some(Millis::MIN),
            last_arrived: None,
            demand: [(Millis::MIN, i64::MAX), (-1, -3), (Millis::MAX, i64::MIN)].into(),
        };
        let mut state = SkuState::default();
        // "é" and "ê" share their first UTF-8 byte
        state.nodes.insert("N1".into(), node(Millis::MAX, &[("é2", Millis::MIN, 1), ("ê", 0, -1), ("ê", Millis::MAX, i64::MAX)]));
        state.nodes.insert(String::new(), NodeState { last_arrived: Some(Millis::MAX), ..node(-1, &[]) });
        state.seen.ids = [("ê".to_string(), (Millis::MIN, 7)), ("é".to_string(), (Millis::MAX, u32::MAX))].into();
        state.seen.newest = Some(Millis::MAX);
        let back = SkuState::decode(&state.encode(Some(Millis::MAX))).unwrap();
        assert_eq!((back.nodes, back.seen.newest), (state.nodes, Some(Millis::MAX)));
        // the ids within the window: arrived at or after MAX - MAX = 0
        assert_eq!(back.seen.ids, [("é".to_string(), (Millis::MAX, u32::MAX))].into());
    }

    #[test]
    fn version_1_is_still_read_and_version_2_is_smaller() {
        let mut state = SkuState::default();
        events().iter().for_each(|event| {
            state.apply(event, FoldConfig::default());
        });
        // version 1 of the state of node N2 alone (reserve 3, hold 1; times 16 and 21)
        let mut one = vec![1];
        let put_string = |out: &mut Vec<u8>, text: &str| {
            out.extend_from_slice(&(text.len() as u32).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        };
        one.extend_from_slice(&Millis::MIN.to_le_bytes());
        one.extend_from_slice(&1u32.to_le_bytes());
        put_string(&mut one, "N2");
        [3, 1, 16, 21].iter().for_each(|value: &i64| one.extend_from_slice(&value.to_le_bytes()));
        one.push(0);
        one.extend_from_slice(&0u32.to_le_bytes());
        one.extend_from_slice(&0u32.to_le_bytes());
        let read = SkuState::decode(&one).unwrap();
        // version 1 knew no demand
        let n2 = NodeState { demand: BTreeMap::new(), ..state.nodes["N2"].clone() };
        assert_eq!(read.nodes.into_iter().collect::<Vec<_>>(), vec![("N2".to_string(), n2)]);
        let two = state.encode(None);
        assert_eq!(two[0], VERSION);
        assert!(two.len() < 75, "{} bytes", two.len());
    }

    #[test]
    fn a_batch_row_comes_back_as_it_was_and_a_damaged_one_says_where() {
        let mut state = SkuState::default();
        events().iter().for_each(|event| {
            state.apply(event, FoldConfig::default());
        });
        let info = SkuInfo { sku: "S".into(), category: "toys".into(), seller: Some("S-1".into()), hazmat: true, price: 12.5, attributes: r#"{"a":1}"#.into() };
        let row = SkuRow { info, states: state.nodes.into_iter().collect(), features: vec![("N1".into(), vec![1.5, -0.0, f64::MAX]), ("N2".into(), vec![])] };
        let bytes = encode_row(&row);
        assert_eq!(decode_row(&bytes).unwrap(), row);
        let bare = SkuRow { info: SkuInfo { seller: None, hazmat: false, ..row.info.clone() }, ..SkuRow::default() };
        assert_eq!(decode_row(&encode_row(&bare)).unwrap(), bare);
        assert!(decode_row(&bytes[..bytes.len() - 3]).unwrap_err().contains("truncated"));
        assert!(decode_row(&[9]).unwrap_err().contains("unknown row encoding version 9"));
        assert!(decode_row(&[bytes.as_slice(), &[0]].concat()).unwrap_err().contains("left over"));
    }
}
