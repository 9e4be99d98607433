//! Scoring time of the pure-Rust evaluator next to XGBoost's own predict call through the
//! binding, for one row and for a batch of 1,000 rows, on a model of 300 trees of depth 6 over
//! the 47 features of `core::features`. One command, one run:
//!
//!     cargo bench -p sellable-models --bench score
//!
//! Each figure is the median of 7 timed batches after a warm-up; `black_box` keeps the work.

use std::hint::black_box;

use sellable_models::evaluator::Evaluator;
use sellable_models::{median_ns, train_fixed};

fn main() {
    let features = 47;
    let rows = 5_000;
    let mut sequence = sellable_models::bench_sequence(0x9e37_79b9_7f4a_7c15, 100_000);
    let mut next = move || sequence() as f32;
    let data: Vec<f32> = (0..rows * features).map(|_| if next() < 0.05 { f32::NAN } else { next() }).collect();
    let labels: Vec<f32> = (0..rows)
        .map(|r| {
            let row = &data[r * features..(r + 1) * features];
            let signal = row[0].max(0.0) + row[1].max(0.0) * row[2].max(0.0) + 0.3 * next();
            if signal > 0.9 { 1.0 } else { 0.0 }
        })
        .collect();
    let model = train_fixed(&data, rows, &labels, 300, 6, 0.05).expect("training the benchmark model");
    let evaluator = Evaluator::from_json(model.json()).expect("loading the model");
    println!("model: {} trees of depth <= 6, {} features", evaluator.trees(), evaluator.features());

    let row = &data[..features];
    let xgboost_one = median_ns(2_000, || {
        black_box(model.predict(black_box(row), 1).expect("predict"));
    });
    let rust_one = median_ns(200_000, || {
        black_box(evaluator.predict(black_box(row)));
    });
    let batch = &data[..1_000 * features];
    // one row per call as serving scores, but a different row each time (other paths, other lines)
    let rust_many = median_ns(200, || {
        for row in batch.chunks_exact(features) {
            black_box(evaluator.predict(black_box(row)));
        }
    }) / 1_000.0;
    let xgboost_batch = median_ns(20, || {
        black_box(model.predict(black_box(batch), 1_000).expect("predict"));
    }) / 1_000.0;
    let mut out = Vec::with_capacity(1_000);
    let rust_batch = median_ns(200, || {
        evaluator.predict_batch(black_box(batch), &mut out);
        black_box(&out);
    }) / 1_000.0;
    println!("{:<40} {:>10.0} ns/row   (baseline)", "xgboost predict, 1 row", xgboost_one);
    println!("{:<40} {:>10.0} ns/row   {:>6.1}x faster", "rust evaluator, 1 row", rust_one, xgboost_one / rust_one);
    println!("{:<40} {:>10.0} ns/row   {:>6.1}x faster", "rust evaluator, 1 row, 1,000 different", rust_many, xgboost_one / rust_many);
    println!("{:<40} {:>10.0} ns/row   (baseline)", "xgboost predict, 1,000 rows", xgboost_batch);
    println!("{:<40} {:>10.0} ns/row   {:>6.1}x faster", "rust evaluator, 1,000 rows", rust_batch, xgboost_batch / rust_batch);
}
