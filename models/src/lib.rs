//! sellable-models: the `p_fulfill` model from training set to serving.
//!
//! - [`train`]: trains with the real XGBoost library (the `xgb` binding, linked against the
//!   shared library `scripts/setup.sh` installs): time split, early stopping, class weighting.
//! - [`evaluate`]: held-out metrics beside naive ATP and the best static safety stock, and the
//!   threshold for a target oversell rate; [`report`] renders them as `report.html`.
//! - [`registry`]: versions on disk, promotion and rollback, loading with checks.
//! - [`calibrate`]: the Platt scaling of scores fitted on the validation days, applied by serving.
//! - [`evaluator`]: scores the XGBoost JSON on the CPU without XGBoost (what serving calls).
//!
//! Training, evaluation and the report need the `train` feature (XGBoost, plotters); serving
//! builds without it and links no XGBoost: it needs only the registry and the evaluator.
//!
//! Tests live beside the code; they train real (small) XGBoost models (with `train`).

pub mod calibrate;
pub mod config;
#[cfg(feature = "train")]
pub mod evaluate;
pub mod evaluator;
#[cfg(feature = "train")]
mod job;
pub mod registry;
#[cfg(feature = "train")]
pub mod report;
#[cfg(feature = "train")]
pub mod train;

pub use config::TrainConfig;
#[cfg(feature = "train")]
pub use job::{fit, Fitted, ModelError, Registered, TrainJob, PARITY_TOLERANCE};
pub use registry::{Model, Registry, RegistryError};
#[cfg(feature = "train")]
pub use train::{train_fixed, Orders, TrainedModel};

/// The benchmarks' pseudo-random numbers (xorshift64): a fixed sequence from `seed` (not zero) of
/// values in [0, 1) in steps of 1 / `steps`, so a bench's data is the same on every run.
pub fn bench_sequence(seed: u64, steps: u64) -> impl FnMut() -> f64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % steps) as f64 / steps as f64
    }
}

/// The benchmarks' timer (`cargo bench -p sellable-models` and `-p sellable-dsl`): median
/// nanoseconds per call of `work` over 7 batches of `calls`, after a warm-up.
pub fn median_ns(calls: u32, mut work: impl FnMut()) -> f64 {
    for _ in 0..calls / 10 + 1 {
        work();
    }
    let mut batches: Vec<f64> = (0..7)
        .map(|_| {
            let started = std::time::Instant::now();
            for _ in 0..calls {
                work();
            }
            started.elapsed().as_nanos() as f64 / calls as f64
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[3]
}

