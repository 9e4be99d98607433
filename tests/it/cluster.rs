//! The nightly job on a Ballista cluster of separate processes: `sellable ballista scheduler` and
//! `sellable ballista executor`, and `sellable batch --engine ballista --scheduler` as their client.

use std::process::{Command, Stdio};
use std::time::Duration;

use sellable_bench::SimConfig;
use sellable_core::FoldConfig;

use crate::{free_port, generated_lake, KillOnDrop, DAY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nightly_job_on_a_cluster_of_processes_equals_the_local_job() {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig { seed: 71, skus: 120, nodes: 12, days: 3.0, ..SimConfig::default() };
    let (summary, local) = generated_lake(&config, &dir.path().join("local")).await;
    // the same marketplace (the simulator is deterministic) in a lake of its own
    let (_, remote) = generated_lake(&config, &dir.path().join("cluster")).await;
    let asof = summary.end - DAY / 2;

    let sellable = env!("CARGO_BIN_EXE_sellable");
    let scheduler_port = free_port();
    let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
    let _scheduler = KillOnDrop(
        Command::new(sellable)
            .args(["ballista", "scheduler", "--bind", &format!("127.0.0.1:{scheduler_port}")])
            .stdout(Stdio::null())
            .stderr(log("scheduler.log"))
            .spawn()
            .unwrap(),
    );
    // started together: the executor waits for the scheduler to take connections
    let (flight, grpc) = (free_port(), free_port());
    let _executor = KillOnDrop(
        Command::new(sellable)
            .args(["ballista", "executor", "--scheduler", &format!("127.0.0.1:{scheduler_port}")])
            .args(["--port", &flight.to_string(), "--grpc-port", &grpc.to_string(), "--tasks", "2"])
            .args(["--work-dir", dir.path().join("shuffles").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log("executor.log"))
            .spawn()
            .unwrap(),
    );
    std::fs::create_dir_all(dir.path().join("shuffles")).unwrap();
    // the executor registers with the scheduler: wait for its log to say so
    for attempt in 0.. {
        let said = std::fs::read_to_string(dir.path().join("scheduler.log")).unwrap_or_default();
        if said.contains("register executor") {
            break;
        }
        assert!(attempt < 300, "no executor registered:\n{said}\n{}", std::fs::read_to_string(dir.path().join("executor.log")).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut batch = Command::new(sellable);
    batch.args(["batch", "--lake", remote.location(), "--asof", &asof.to_string()]);
    batch.args(["--engine", "ballista", "--scheduler", &format!("df://127.0.0.1:{scheduler_port}")]);
    let ran = tokio::time::timeout(Duration::from_secs(300), tokio::task::spawn_blocking(move || batch.output().unwrap())).await.unwrap().unwrap();
    let said = String::from_utf8_lossy(&ran.stderr);
    assert!(ran.status.success(), "{said}\n{}", std::fs::read_to_string(dir.path().join("scheduler.log")).unwrap_or_default());
    assert!(said.contains("feature rows"), "{said}");
    // the events were read on the cluster, by its executor's scans of the lake's fragments
    let planned = std::fs::read_to_string(dir.path().join("scheduler.log")).unwrap();
    assert!(planned.contains(&format!("LakeScanExec: {}/events.lance", remote.location())), "{planned}");

    local.nightly(asof, FoldConfig::default(), &sellable_batch::Progress::hidden()).await.unwrap();
    let view = remote.load_batch_view().await.unwrap();
    assert!(view.states.len() > 50);
    assert_eq!(view.states, local.load_batch_view().await.unwrap().states);
    let (features, expected) = (remote.load_features(Some(asof)).await.unwrap(), local.load_features(Some(asof)).await.unwrap());
    assert_eq!(features.rows.len(), expected.rows.len());
    for (key, row) in &expected.rows {
        let same = row.iter().zip(&features.rows[key]).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{key:?}: {row:?} != {:?}", features.rows[key]);
    }
}
