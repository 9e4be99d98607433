//! Rule evaluation time per node decision for rule sets of 10, 100 and 1,000 rules, next to
//! XGBoost's own predict call (through the binding) for one row of a 300-tree, depth-6 model:
//! the model scoring the same request must pay. One command, one run:
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
    // Baseline: XGBoost predicting one row of 20 features with 300 trees of depth 6.
    let rows = 2_000;
    let features = 20;
    let data: Vec<f32> = (0..rows * features).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    let labels: Vec<f32> = (0..rows).map(|r| if data[r * features] + data[r * features + 1] > 1.0 { 1.0 } else { 0.0 }).collect();
    let model = sellable_models::train_fixed(&data, rows, &labels, 300, 6, 0.1).expect("training the baseline model");
    let row: Vec<f32> = data[..features].to_vec();
    let xgboost = time(2_000, || {
        black_box(model.predict(black_box(&row), 1).expect("predict"));
    });
    println!("{:<44} {:>12.0} ns", "xgboost predict, 1 row, 300 trees (baseline)", xgboost);
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
            ns / xgboost
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
    println!("{:<44} {:>12.0} ns   {:>6.3}x baseline   (0 fired)", "rules evaluate, 1000 rules, none matching", ns, ns / xgboost);
}
