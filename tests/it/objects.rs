//! The lake in an object store: import, the nightly job, the archiver's appends and serving, on an
//! `s3://` lake held by a local S3-compatible server (moto's, installed by `scripts/setup.sh`).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sellable_batch::Lake;
use sellable_bench::{generate, SimConfig};
use sellable_core::event::read_event_file;

use crate::{forget, free_port, keyed, redis_names, KillOnDrop, Probe, DAY};

/// A moto server on a port of its own holding one bucket; killed when dropped.
struct S3 {
    _server: KillOnDrop,
    endpoint: String,
}

impl S3 {
    async fn start(bucket: &str, log: &Path) -> S3 {
        let moto = crate::venv_program("moto_server", "moto");
        let port = free_port();
        let server = Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let (server, endpoint) = (KillOnDrop(server), format!("http://127.0.0.1:{port}"));
        // a bucket is made by a PUT of its name (moto does not check signatures)
        for attempt in 0.. {
            match reqwest::Client::new().put(format!("{endpoint}/{bucket}")).send().await {
                Ok(made) if made.status().is_success() => break,
                _ if attempt < 300 => tokio::time::sleep(Duration::from_millis(100)).await,
                other => panic!("moto made no bucket: {other:?}\n{}", std::fs::read_to_string(log).unwrap_or_default()),
            }
        }
        S3 { _server: server, endpoint }
    }

    /// What the `AWS_*` environment variables say to a `sellable` process, as Lance's storage
    /// options for this test's own process.
    fn options(&self) -> HashMap<String, String> {
        self.settings().into_iter().map(|(name, value)| (name.to_lowercase(), value.to_string())).collect()
    }

    fn settings(&self) -> [(&'static str, &str); 5] {
        [
            ("AWS_ENDPOINT", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
        ]
    }

    fn sellable(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sellable"));
        command.envs(self.settings());
        command
    }

    /// Runs `sellable ARGS` to its end; its stderr.
    fn run(&self, args: &[&str]) -> String {
        let output = self.sellable().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "sellable {args:?}: {stderr}");
        stderr
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_pipeline_runs_on_an_s3_lake() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3::start("sellable", &dir.path().join("moto.log")).await;
    let summary = generate(&SimConfig { seed: 23, skus: 40, nodes: 6, days: 2.0, ..SimConfig::default() }, &dir.path().join("gen")).unwrap();
    let (remote, local) = ("s3://sellable/lakes/one", dir.path().join("local"));
    let gen = dir.path().join("gen");
    let (gen, local) = (gen.to_str().unwrap(), local.to_str().unwrap());

    // import and the nightly job, on the s3 lake and on a local one: the same rows
    let asof = (summary.end - DAY).to_string();
    for lake in [remote, local] {
        s3.run(&["lake", "import", "--lake", lake, "--from", gen]);
        s3.run(&["batch", "--lake", lake, "--asof", &asof]);
    }
    let lake = Lake::at(remote).unwrap().with_storage_options(s3.options());
    let (in_s3, on_disk) = (lake.load_batch_view().await.unwrap(), Lake::at(local).unwrap().load_batch_view().await.unwrap());
    assert!(!in_s3.states.is_empty());
    assert_eq!(in_s3.states, on_disk.states);
    // bit for bit (a missing feature is NaN, which equals nothing)
    let bits = |features: &HashMap<(String, String), Vec<f64>>| -> std::collections::BTreeMap<(String, String), Vec<u64>> {
        features.iter().map(|(key, values)| (key.clone(), values.iter().map(|v| v.to_bits()).collect())).collect()
    };
    assert!(!in_s3.features.is_empty());
    assert!(bits(&in_s3.features) == bits(&on_disk.features), "the features of the s3 lake differ from the local lake's");
    // the nightly job on Ballista (standalone) over the s3 lake: the same rows, and the tables it
    // shared with its executor (in the bucket) removed when it is done
    s3.run(&["batch", "--lake", remote, "--asof", &asof, "--engine", "ballista"]);
    let on_ballista = lake.load_batch_view().await.unwrap();
    assert_eq!(on_ballista.states, on_disk.states);
    assert!(bits(&on_ballista.features) == bits(&on_disk.features), "the features computed on Ballista differ from the local lake's");
    let listing = reqwest::get(format!("{}/sellable?list-type=2&prefix=lakes/one/scratch", s3.endpoint)).await.unwrap().text().await.unwrap();
    assert!(listing.contains("ListBucketResult") && !listing.contains("<Key>"), "{listing}");
    // an incremental night on the s3 lake, after the full one that leaves its state there: the
    // local lake's full recompute, bit for bit
    let before = summary.end - DAY - 6 * 3_600_000;
    let (before, night) = (before.to_string(), (before + DAY).to_string());
    s3.run(&["batch", "--lake", remote, "--full", "--asof", &before]);
    let folded = s3.run(&["batch", "--lake", remote, "--incremental", "--asof", &night]);
    assert!(folded.contains("folded the events that arrived since"), "{folded}");
    s3.run(&["batch", "--lake", local, "--asof", &night]);
    let (in_s3, on_disk) = (lake.load_batch_view().await.unwrap(), Lake::at(local).unwrap().load_batch_view().await.unwrap());
    assert_eq!(in_s3.states, on_disk.states);
    assert!(bits(&in_s3.features) == bits(&on_disk.features), "the incremental night's features differ from the full recompute's");
    let info = lake.info().await.unwrap();
    let events = info.iter().find(|dataset| dataset.name == "events").unwrap();
    assert_eq!(events.rows, summary.events);
    assert!(info.iter().all(|dataset| dataset.bytes > 0), "{info:?}");
    assert!(!Path::new("s3:").exists(), "nothing is written to a local directory named after the URI");

    // `sellable run` on it: a posted receipt is answered, archived into the s3 lake, and counted
    // once across the nightly jobs' cutovers there
    let (url, stream, namespace) = redis_names("s3");
    let port = free_port();
    let log_path = dir.path().join("run.log");
    let mut command = s3.sellable();
    // the decision log's spill in the test's directory (by default a remote lake's is in temporary space)
    command.env("SELLABLE__SERVE__DECISIONS", format!("{{ spill = \"{}\" }}", dir.path().join("spill").display()));
    let _run = KillOnDrop(
        keyed(&mut command)
            .args(["run", "--lake", remote, "--redis", &url, "--stream", &stream, "--namespace", &namespace, "--nightly-every", "1"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let last = read_event_file(&summary.paths.events).unwrap().map(Result::unwrap).last().unwrap();
    let probe = Probe::at(&lake, last.sku, last.node, port, &format!("s3-receipt-{}", std::process::id())).await;
    probe.wait_up(log).await;
    probe.post().await;
    let after = probe.answer_with_receipt(log).await;
    let mut cutovers = 0;
    for _ in 0..600 {
        cutovers = log().matches("run: cutover to").count();
        if cutovers >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cutovers >= 2, "{}", log());
    let later = probe.answer().await;
    assert!(probe.units(&later) >= 1_000 && probe.units(&later) <= probe.units(&after) + 1, "{after}\n{later}");
    assert!(lake.batch_view_asof().await.unwrap() > Some(summary.end), "the nightly jobs wrote their views to the s3 lake");
    let archived = lake.events_after(summary.end).await.unwrap().into_iter().filter(|e| e.as_ref().is_ok_and(|e| e.event_id == probe.receipt.event_id)).count();
    assert_eq!(archived, 1, "{}", log());
    drop(_run);
    forget(&url, &stream, &namespace).await;
}
