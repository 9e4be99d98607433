//! sellable-bench: the marketplace simulator (`sellable gen`), and later the load drivers and
//! reports of `benchmarks/`. Tests of the simulator are in `tests/it/`.

pub mod simulator;

pub use simulator::{generate, SimConfig, SimError, SimPaths, SimSummary};
