//! Rule evaluation time per node decision for rule sets of 10, 100 and 1,000 rules, next to what
//! serving pays to score the same node: the pure-Rust evaluator of `sellable-models` on one row
//! of a 300-tree, depth-6 model (generated here, in XGBoost's JSON format, so the bench needs no
//! XGBoost). One command, one run:
//!
//!     cargo bench -p sellable-dsl --bench eval
//!
//! Each figure is the median of 7 timed batches after a warm-up; `black_box` keeps the work.
//! `RULES_PROFILE=1` runs only the 1,000-rule evaluation, for a profiler such as callgrind.

use std::hint::black_box;
use sellable_models::median_ns as time;

use sellable_dsl::{load, Facts, RuleSet, Schema, Source, Value};

/// A realistic mix: seller buffers, category embargoes, hot-item caps, price caps, guards.
fn ruleset(rules: usize) -> RuleSet {
    let mut text = String::from("ruleset \"bench\"\n");
    for i in 0..rules {
        let rule = match i % 5 {
            0 => format!("rule \"buffer {i}\" when node.seller == \"S-{i}\" then hold 1\n"),
            1 => format!("rule \"embargo {i}\" when sku.category == \"cat{i}\" and region in [\"DE\", \"FR\", \"IT\"] then deny \"embargo {i}\"\n"),
            2 => format!("rule \"hot {i}\" when p_fulfill < 0.{} and velocity_5m >= {i} then cap 1\n", 50 + i % 50),
            3 => format!("rule \"price {i}\" priority {} when sku.price > {i} and qty >= 2 and not sku.hazmat then cap 3\n", i % 7),
            _ => format!("rule \"guard {i}\" when node.kind == \"seller\" and sku.category starts with \"c{i}\" then require p_fulfill >= 0.8\n"),
        };
        text.push_str(&rule);
    }
    let loaded = load(&[Source { name: "bench.rules".into(), text }], &Schema::standard());
    loaded.ruleset.expect("the generated rules are valid")
}

fn facts(ruleset: &RuleSet) -> Facts {
    let schema = ruleset.schema();
    let mut facts = ruleset.facts();
    let mut set = |name: &str, value: Value| facts.set(schema.slot(name).unwrap(), value);
    set("sku.id", Value::Text("SKU-000042".into()));
    set("sku.category", Value::Text("cat3".into()));
    set("sku.hazmat", Value::Bool(false));
    set("sku.price", Value::Number(40.0));
    set("node.id", Value::Text("SL-0007".into()));
    set("node.kind", Value::Text("seller".into()));
    set("node.seller", Value::Text("S-12".into()));
    set("region", Value::Text("DE".into()));
    set("qty", Value::Number(2.0));
    set("atp", Value::Number(12.0));
    set("p_fulfill", Value::Number(0.83));
    set("velocity_5m", Value::Number(25.0));
    facts
}

/// An XGBoost JSON model of `trees` full trees of `depth` over `features` features, with splits
/// and leaves spread by a fixed pseudo-random sequence (the shape, not the values, sets the cost).
fn forest(trees: usize, depth: u32, features: usize) -> String {
    let mut next = sellable_models::bench_sequence(0x2545_f491_4f6c_dd1d, 10_000);
    let internal = (1usize << depth) - 1;
    let count = 2 * internal + 1;
    let trees: Vec<String> = (0..trees)
        .map(|_| {
            let child = |node: usize, offset: usize| if node < internal { (2 * node + offset) as i64 } else { -1 };
            let left: Vec<i64> = (0..count).map(|node| child(node, 1)).collect();
            let right: Vec<i64> = (0..count).map(|node| child(node, 2)).collect();
            let split: Vec<usize> = (0..count).map(|node| if node < internal { (next() * features as f64) as usize } else { 0 }).collect();
            let condition: Vec<f64> = (0..count).map(|node| if node < internal { next() } else { next() * 0.2 - 0.1 }).collect();
            let default_left: Vec<i64> = (0..count).map(|node| i64::from(node % 2 == 0)).collect();
            format!(
                r#"{{"left_children":{left:?},"right_children":{right:?},"split_indices":{split:?},"split_conditions":{condition:?},"default_left":{default_left:?}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"learner":{{"objective":{{"name":"binary:logistic"}},"learner_model_param":{{"num_feature":"{features}","base_score":"5E-1"}},"gradient_booster":{{"name":"gbtree","model":{{"trees":[{}]}}}}}}}}"#,
        trees.join(",")
    )
}

fn main() {
    if std::env::var_os("RULES_PROFILE").is_some() {
        // For profilers (valgrind --tool=callgrind): the 1,000-rule evaluation alone.
        let ruleset = ruleset(1_000);
        let facts = facts(&ruleset);
        for _ in 0..2_000 {
            black_box(ruleset.evaluate(black_box(&facts)));
        }
        return;
    }
    // Baseline: the evaluator scoring one row of 20 features with 300 trees of depth 6.
    let features = 20;
    let model = sellable_models::evaluator::Evaluator::from_json(&forest(300, 6, features)).expect("the generated forest loads");
    let row: Vec<f32> = (0..features).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    let baseline = time(20_000, || {
        black_box(model.predict(black_box(&row)));
    });
    println!("{:<44} {:>12.0} ns", "evaluator predict, 1 row, 300 trees (baseline)", baseline);
    for rules in [10, 100, 1_000] {
        let ruleset = ruleset(rules);
        let facts = facts(&ruleset);
        let fired = ruleset.evaluate(&facts).fired.len();
        let calls = 200_000 / rules as u32 + 100;
        let ns = time(calls, || {
            black_box(ruleset.evaluate(black_box(&facts)));
        });
        println!(
            "{:<44} {:>12.0} ns   {:>6.3}x baseline   ({fired} fired)",
            format!("rules evaluate, {rules} rules"),
            ns,
            ns / baseline
        );
    }
    // The same 1,000 rules for a request none of them matches: the cost of looking alone.
    let ruleset = ruleset(1_000);
    let mut quiet = facts(&ruleset);
    let schema = ruleset.schema();
    quiet.set(schema.slot("node.kind").unwrap(), Value::Text("warehouse".into()));
    quiet.set(schema.slot("node.seller").unwrap(), Value::Text("none".into()));
    quiet.set(schema.slot("p_fulfill").unwrap(), Value::Number(0.99));
    quiet.set(schema.slot("qty").unwrap(), Value::Number(1.0));
    let ns = time(400, || {
        black_box(ruleset.evaluate(black_box(&quiet)));
    });
    println!("{:<44} {:>12.0} ns   {:>6.3}x baseline   (0 fired)", "rules evaluate, 1000 rules, none matching", ns, ns / baseline);
}
