//! sellable-bench: the marketplace simulator (`sellable gen`, and the data of every test and
//! benchmark), and a local Redis Cluster for the tests that need one. The load drivers are binaries in `src/bin/`, built with the `load` feature so that
//! the simulator's users do not build a Redis or HTTP client for them. Tests of the simulator are
//! in `tests/it/`.

pub mod local_cluster;
pub mod simulator;

pub use local_cluster::LocalCluster;
pub use simulator::{generate, Dynamics, SimConfig, SimError, SimPaths, SimSummary};

/// Requests worth asking of a marketplace: up to `count` (sku, country) pairs whose SKU has stock
/// at a node of that country in `fold` (in sku×node order, each pair once). Tests and load
/// drivers sample answers with them.
pub fn stocked_requests(fold: &sellable_core::Fold, nodes: &[sellable_core::NodeInfo], count: usize) -> Vec<(String, String)> {
    let country: std::collections::HashMap<&str, &str> = nodes.iter().map(|node| (node.node.as_str(), node.country.as_str())).collect();
    let mut requests: Vec<(String, String)> = fold
        .states
        .iter()
        .filter(|(_, state)| state.atp() > 0)
        .filter_map(|((sku, node), _)| Some((sku.clone(), country.get(node.as_str())?.to_string())))
        .collect();
    requests.dedup();
    requests.truncate(count);
    requests
}
