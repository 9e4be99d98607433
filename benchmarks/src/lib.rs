//! sellable-bench: the marketplace simulator (`sellable gen`, and the data of every test and
//! benchmark). The load drivers are binaries in `src/bin/`, built with the `load` feature so that
//! the simulator's users do not build a Redis or HTTP client for them. Tests of the simulator are
//! in `tests/it/`.

pub mod simulator;

pub use simulator::{generate, SimConfig, SimError, SimPaths, SimSummary};
