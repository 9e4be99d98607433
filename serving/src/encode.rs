//! The JSON of an answer ([`Availability`]) and of its decision-log line, written straight into
//! bytes: the same text serde_json writes for them (a test compares the two on answers of every
//! shape), for fewer instructions. serde_json looks at each byte of each string for what to
//! escape, and that was most of what encoding an answer cost; here a string is checked eight
//! bytes at a time and, with nothing to escape (nearly always), copied whole. A string that
//! needs escaping is written by serde_json.

use sellable_core::holds::Taken;
use sellable_core::Millis;

use crate::{Availability, OptionJson, RuleFired, Versions};

/// `answer`'s JSON, appended to `out`.
pub(crate) fn answer(out: &mut Vec<u8>, answer: &Availability) {
    // every field named: a field added to the answer does not compile here until it is written
    let Availability {
        sku,
        region,
        qty,
        decision,
        units,
        available,
        options,
        plan,
        reasons,
        rules_fired,
        grade,
        degraded,
        degraded_reasons,
        freshness_ms,
        versions,
    } = answer;
    out.extend_from_slice(b"{\"sku\":");
    string(out, sku);
    out.extend_from_slice(b",\"region\":");
    string(out, region);
    out.extend_from_slice(b",\"qty\":");
    number(out, *qty);
    out.extend_from_slice(b",\"decision\":");
    string(out, decision.as_str());
    out.extend_from_slice(b",\"units\":");
    number(out, *units);
    out.extend_from_slice(b",\"available\":");
    number(out, *available);
    out.extend_from_slice(b",\"options\":");
    list(out, options, option);
    out.extend_from_slice(b",\"plan\":");
    list(out, plan, taken);
    out.extend_from_slice(b",\"reasons\":");
    list(out, reasons, |out, reason| string(out, reason));
    out.extend_from_slice(b",\"rules_fired\":");
    list(out, rules_fired, fired);
    out.extend_from_slice(b",\"grade\":");
    string(out, grade.as_str());
    out.extend_from_slice(if *degraded { b",\"degraded\":true" } else { b",\"degraded\":false" });
    out.extend_from_slice(b",\"degraded_reasons\":");
    list(out, degraded_reasons, |out, reason| string(out, reason));
    out.extend_from_slice(b",\"freshness_ms\":");
    match freshness_ms {
        Some(ms) => number(out, *ms),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"versions\":");
    let Versions { batch_view, speed_view, model, ruleset } = versions;
    out.extend_from_slice(b"{\"batch_view\":");
    string(out, batch_view);
    out.extend_from_slice(b",\"speed_view\":");
    string(out, speed_view);
    out.extend_from_slice(b",\"model\":");
    optional(out, model.as_deref());
    out.extend_from_slice(b",\"ruleset\":");
    optional(out, ruleset.as_deref());
    out.extend_from_slice(b"}}");
}

/// The decision log's line of `answer` (without its newline), appended to `out`: a
/// [`sellable_core::DecisionRecord`] as it serialises, its lists (the reasons and the degraded
/// reasons together, the options, the rules fired) as JSON values.
pub(crate) fn line(out: &mut Vec<u8>, at: Millis, request_id: &str, kind: &str, answer: &Availability) {
    out.extend_from_slice(b"{\"at\":");
    number(out, at);
    out.extend_from_slice(b",\"request_id\":");
    string(out, request_id);
    out.extend_from_slice(b",\"kind\":");
    string(out, kind);
    out.extend_from_slice(b",\"sku\":");
    string(out, &answer.sku);
    out.extend_from_slice(b",\"region\":");
    string(out, &answer.region);
    out.extend_from_slice(b",\"qty\":");
    number(out, answer.qty);
    out.extend_from_slice(b",\"decision\":");
    string(out, answer.decision.as_str());
    out.extend_from_slice(b",\"units\":");
    number(out, answer.units);
    out.extend_from_slice(b",\"grade\":");
    string(out, answer.grade.as_str());
    out.extend_from_slice(b",\"reasons\":");
    list(out, answer.reasons.iter().chain(&answer.degraded_reasons), |out, reason| string(out, reason));
    out.extend_from_slice(b",\"options\":");
    list(out, &answer.options, option);
    out.extend_from_slice(b",\"rules_fired\":");
    list(out, &answer.rules_fired, fired);
    out.extend_from_slice(b",\"rules\":");
    let rules: std::collections::BTreeSet<&str> = answer.rules_fired.iter().map(|fired| fired.rule.as_str()).collect();
    string(out, &rules.into_iter().collect::<Vec<_>>().join("|"));
    out.extend_from_slice(b",\"batch_view\":");
    string(out, &answer.versions.batch_view);
    out.extend_from_slice(b",\"model\":");
    optional(out, answer.versions.model.as_deref());
    out.extend_from_slice(b",\"ruleset\":");
    optional(out, answer.versions.ruleset.as_deref());
    out.push(b'}');
}

fn option(out: &mut Vec<u8>, option: &OptionJson) {
    node_units(out, &option.node, option.units);
    out.extend_from_slice(b",\"p_fulfill\":");
    match option.p_fulfill {
        // serde_json's text of a float (and `null` for one that is not finite)
        Some(p) => serde_json::to_writer(&mut *out, &p).expect("a float serialises"),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
}

fn taken(out: &mut Vec<u8>, taken: &Taken) {
    node_units(out, &taken.node, taken.units);
    out.push(b'}');
}

/// An object's start: `{"node":…,"units":…` (an option and a plan's entry both begin so).
fn node_units(out: &mut Vec<u8>, node: &str, units: i64) {
    out.extend_from_slice(b"{\"node\":");
    string(out, node);
    out.extend_from_slice(b",\"units\":");
    number(out, units);
}

fn fired(out: &mut Vec<u8>, fired: &RuleFired) {
    out.extend_from_slice(b"{\"node\":");
    string(out, &fired.node);
    out.extend_from_slice(b",\"rule\":");
    string(out, &fired.rule);
    out.extend_from_slice(b",\"action\":");
    string(out, &fired.action);
    out.extend_from_slice(b",\"saw\":");
    list(out, &fired.saw, |out, saw| string(out, saw));
    out.push(b'}');
}

fn list<T>(out: &mut Vec<u8>, items: impl IntoIterator<Item = T>, item: impl Fn(&mut Vec<u8>, T)) {
    out.push(b'[');
    for (index, value) in items.into_iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        item(out, value);
    }
    out.push(b']');
}

fn optional(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => string(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

fn number(out: &mut Vec<u8>, value: i64) {
    serde_json::to_writer(&mut *out, &value).expect("an integer serialises");
}

/// `text` as a JSON string.
fn string(out: &mut Vec<u8>, text: &str) {
    if needs_escaping(text.as_bytes()) {
        serde_json::to_writer(&mut *out, text).expect("a string serialises");
    } else {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// Whether `bytes` hold one that JSON escapes: a control character (under 0x20), `"` or `\`
/// (serde_json escapes those and nothing else). Eight bytes at a time: a word has a byte under
/// `n` (`n` ≤ 0x80) when `(word - n·ONES) & !word & HIGHS` is not zero, and a byte equal to `c`
/// when `word ^ c·ONES` has a byte under 1.
fn needs_escaping(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let under = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS != 0;
    let mut words = bytes.chunks_exact(8);
    for chunk in &mut words {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
        if under(word, 0x20) || under(word ^ (ONES * u64::from(b'"')), 1) || under(word ^ (ONES * u64::from(b'\\')), 1) {
            return true;
        }
    }
    words.remainder().iter().any(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;
    use sellable_core::{Grade, Verdict};

    /// Texts with every kind of byte JSON treats apart, at every offset within a word.
    fn texts() -> Vec<String> {
        let mut texts: Vec<String> = ["", "a", "SKU-000001", "ünïcødé ✓ and 💡", "0123456789abcdef0123", "\u{7f} is not escaped"]
            .into_iter()
            .map(String::from)
            .collect();
        for special in ['"', '\\', '\n', '\t', '\u{0}', '\u{1f}', '/', ' ', '~', 'é'] {
            for at in 0..17 {
                let mut text: String = "x".repeat(at);
                text.push(special);
                text.push_str("yz");
                texts.push(text);
            }
        }
        texts
    }

    fn answers() -> Vec<Availability> {
        let texts = texts();
        let text = |index: usize| texts[index % texts.len()].clone();
        (0..texts.len())
            .map(|index| Availability {
                sku: text(index),
                region: text(index + 1),
                qty: index as i64 - 3,
                decision: if index % 2 == 0 { Verdict::Promise } else { Verdict::Deny },
                units: i64::MAX - index as i64,
                available: i64::MIN + index as i64,
                options: (0..index % 4)
                    .map(|option| OptionJson {
                        node: text(index + option),
                        units: option as i64,
                        p_fulfill: [None, Some(0.123456789), Some(1.0), Some(f64::NAN), Some(1e-9), Some(0.0)][(index + option) % 6],
                    })
                    .collect(),
                plan: (0..index % 3).map(|taken| Taken { node: text(index * 7 + taken), units: taken as i64 + 1 }).collect(),
                reasons: (0..index % 3).map(|reason| text(index + reason * 5)).collect(),
                rules_fired: (0..index % 3)
                    .map(|fired| RuleFired {
                        node: text(index + fired),
                        rule: ["hazmat", "buffer", "hazmat"][fired].to_string(),
                        action: text(index * 3 + fired),
                        saw: (0..fired).map(|saw| text(index + saw * 11)).collect(),
                    })
                    .collect(),
                grade: [Grade::Fresh, Grade::BoundedStale, Grade::Conservative, Grade::Unavailable][index % 4],
                degraded: index % 2 == 1,
                degraded_reasons: (0..index % 2).map(|reason| text(index * 13 + reason)).collect(),
                freshness_ms: (index % 3 != 0).then_some(index as i64 * 1000),
                versions: Versions {
                    batch_view: text(index * 17),
                    speed_view: text(index * 19),
                    model: (index % 2 == 0).then(|| text(index * 23)),
                    ruleset: (index % 3 == 0).then(|| text(index * 29)),
                },
            })
            .collect()
    }

    #[test]
    fn an_answer_is_the_text_serde_json_writes() {
        for answer in answers() {
            let mut ours = Vec::new();
            super::answer(&mut ours, &answer);
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&answer).unwrap());
        }
    }

    #[test]
    fn a_line_is_the_decision_record_serde_json_writes() {
        for (index, answer) in answers().into_iter().enumerate() {
            let record = sellable_core::DecisionRecord {
                at: 1_764_921_600_000 + index as i64,
                request_id: texts()[index].clone(),
                kind: "batch".to_string(),
                sku: answer.sku.clone(),
                region: answer.region.clone(),
                qty: answer.qty,
                decision: answer.decision.as_str().to_string(),
                units: answer.units,
                grade: answer.grade.as_str().to_string(),
                reasons: serde_json::to_string(&answer.reasons.iter().chain(&answer.degraded_reasons).collect::<Vec<_>>()).unwrap(),
                options: serde_json::to_string(&answer.options).unwrap(),
                rules_fired: serde_json::to_string(&answer.rules_fired).unwrap(),
                rules: answer.rules_fired.iter().map(|fired| fired.rule.as_str()).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>().join("|"),
                batch_view: answer.versions.batch_view.clone(),
                model: answer.versions.model.clone(),
                ruleset: answer.versions.ruleset.clone(),
            };
            let mut ours = Vec::new();
            line(&mut ours, record.at, &record.request_id, "batch", &answer);
            assert_eq!(String::from_utf8(ours.clone()).unwrap(), serde_json::to_string(&record).unwrap());
            // and it reads back as that record
            assert_eq!(serde_json::from_slice::<sellable_core::DecisionRecord>(&ours).unwrap(), record);
        }
    }

    #[test]
    fn escaping_is_found_at_every_offset_and_only_where_it_is_needed() {
        for text in texts() {
            let expected = text.bytes().any(|byte| byte < 0x20 || byte == b'"' || byte == b'\\');
            assert_eq!(needs_escaping(text.as_bytes()), expected, "{text:?}");
        }
        // every byte value, at every offset of a word
        for byte in 0..=255u8 {
            for at in 0..16 {
                let mut bytes = vec![b'a'; 16];
                bytes[at] = byte;
                assert_eq!(needs_escaping(&bytes), byte < 0x20 || byte == b'"' || byte == b'\\', "byte {byte:#x} at {at}");
            }
        }
    }
}
