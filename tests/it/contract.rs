//! The REST API against its own OpenAPI document: schemathesis (from the setup script's virtual
//! environment) generates requests for every operation of `/openapi.json` served by a real
//! `sellable serve --redis`, and checks that no answer is a server error, breaks its schema, has
//! an undocumented status or content type, or lacks a documented header.

use crate::reservations::{live_marketplace, serve_process};
use crate::{forget, free_port, redis_names, TEST_KEY};

/// Operations tried per phase with this seed: a run of about a minute. `SCHEMATHESIS_EXAMPLES`
/// asks for more (docs/api.md: a longer run).
const EXAMPLES: &str = "30";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_its_openapi_contract() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = crate::venv_program("st", "schemathesis");
    let (_dir, lake) = live_marketplace().await;
    let (url, stream, namespace) = redis_names("contract");
    let port = free_port();
    let _server = serve_process(&lake, &url, &namespace, port).await;
    let examples = std::env::var("SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| EXAMPLES.to_string());
    let mut command = std::process::Command::new(&st);
    command
        .args(["run", &format!("http://127.0.0.1:{port}/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {TEST_KEY}")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance"])
        .args(["--seed", "1", "--max-examples", &examples, "--workers", "2", "--no-color"])
        .env("PYTHONPATH", root.join("tests/schemathesis"))
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .current_dir(lake.local_dir());
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "schemathesis found answers that break the contract:\n{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains("Tested: 17"), "every operation is tested:\n{report}");
    forget(&url, &stream, &namespace).await;
}

/// Resident memory of a process, in MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status.lines().find_map(|line| line.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap();
    kb / 1024.0
}

/// What an anonymous or buggy client could grow, tried on a real `sellable serve --redis`: bodies
/// of junk events at the size limit, eight at a time, round after round; events naming thousands
/// of made-up nodes. The process stays within [`JUNK_GROWTH_MB`] of its size, answers list the
/// first rejected items and count the rest, the metrics gain no series, and `/healthz` and a
/// normal client keep answering throughout: answers reach it while the junk is in flight, not
/// only once the flood is over. How long they take is a benchmark's business, not this test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_bodies_and_made_up_nodes_grow_nothing() {
    let (_dir, lake) = live_marketplace().await;
    let (url, stream, namespace) = redis_names("junk");
    let port = free_port();
    let server = serve_process(&lake, &url, &namespace, port).await;
    let base = format!("http://127.0.0.1:{port}");
    let client = crate::api();
    let (skus, _) = lake.load_catalog().await.unwrap();
    let sku = skus[0].sku.clone();
    let ask = format!("{base}/v1/availability/{sku}?region=EU&qty=1");
    // warm: the first answers and posts allocate what they keep
    for _ in 0..20 {
        assert_eq!(client.get(&ask).send().await.unwrap().status(), 200);
    }
    let metrics_before = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let before = rss_mb(server.0.id());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let normal = {
        let (stop, answered, client, ask, base) = (stop.clone(), answered.clone(), client.clone(), ask.clone(), base.clone());
        tokio::spawn(async move {
            let mut slowest = std::time::Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for url in [ask.clone(), format!("{base}/healthz")] {
                    let started = std::time::Instant::now();
                    let response = client.get(&url).send().await.unwrap();
                    let status = response.status().as_u16();
                    let body = response.text().await.unwrap();
                    // an answer, or a clear refusal while Redis is too slow (the machine is shared
                    // with other tests), never anything else
                    assert!(status == 200 || (status == 503 && body.contains("the speed view is unavailable")), "{url}: {status} {body}");
                    slowest = slowest.max(started.elapsed());
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            slowest
        })
    };
    // 10,000 junk lines of about 400 bytes each: the count and the size at their limits
    let junk: String = (0..10_000).map(|i| format!("{{\"event_id\":\"junk-{i}\",\"note\":\"{}\"}}\n", "x".repeat(380))).collect();
    assert!(junk.len() < 4 << 20);
    let answered_before_the_flood = answered.load(std::sync::atomic::Ordering::Relaxed);
    for _round in 0..3 {
        let posts: Vec<_> = (0..8)
            .map(|_| {
                let (client, junk, base) = (client.clone(), junk.clone(), base.clone());
                tokio::spawn(async move { client.post(format!("{base}/v1/events")).header("content-type", "application/x-ndjson").body(junk).send().await.unwrap() })
            })
            .collect();
        for post in posts {
            let response = post.await.unwrap();
            match response.status().as_u16() {
                202 => {
                    let body: serde_json::Value = response.json().await.unwrap();
                    assert_eq!((body["rejected"].as_array().unwrap().len(), body["rejected_total"].as_u64()), (100, Some(10_000)), "{}", body["rejected"][0]);
                }
                // past the posts in flight at once: shed, nothing done; or refused while Redis is
                // too slow to say which events it already holds
                503 => {
                    let retry = response.headers().contains_key("retry-after");
                    let body = response.text().await.unwrap();
                    assert!((retry && body.contains("overloaded")) || body.contains("the speed view is unavailable"), "{body}");
                }
                status => panic!("{status}: {}", response.text().await.unwrap()),
            }
        }
    }
    // made-up nodes for a real SKU: refused at the door, no metric series for them
    let made_up: String = (0..5_000)
        .map(|i| format!("{{\"event_id\":\"node-{i}\",\"ts\":{},\"sku\":\"{sku}\",\"node\":\"NODE-MADE-UP-{i}\",\"kind\":\"receipt\",\"qty\":1}}\n", crate::chrono_now()))
        .collect();
    let mut attempts = 0;
    let body: serde_json::Value = loop {
        let response = client.post(format!("{base}/v1/events")).header("content-type", "application/x-ndjson").body(made_up.clone()).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        // a clear refusal while Redis is too slow is retried, as a client would
        if status == 503 && text.contains("the speed view is unavailable") && attempts < 20 {
            attempts += 1;
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            continue;
        }
        assert_eq!(status, 202, "{text}");
        break serde_json::from_str(&text).unwrap();
    };
    let answered_during_the_flood = answered.load(std::sync::atomic::Ordering::Relaxed) - answered_before_the_flood;
    assert_eq!(body["rejected_total"], 5_000);
    assert!(body["rejected"][0]["error"].as_str().unwrap().contains("NODE-MADE-UP-0"), "{body}");
    let metrics_after = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics_after.contains("NODE-MADE-UP"));
    // beside the latency histogram's series (per declared route, method and status: a bounded
    // set), a few outcome counters at most, nothing per node
    let series = |text: &str| text.lines().filter(|line| !line.starts_with('#') && !line.starts_with("sellable_http_request_duration")).count();
    assert!(series(&metrics_after) <= series(&metrics_before) + 10, "{} series before, {} after:\n{metrics_after}", series(&metrics_before), series(&metrics_after));

    let grown = rss_mb(server.0.id()) - before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let slowest = normal.await.unwrap();
    assert!(grown < JUNK_GROWTH_MB, "the server grew by {grown:.0} MB");
    assert!(answered_during_the_flood > 0, "the normal client got no answer while the junk was in flight");
    eprintln!("junk: the server grew by {grown:.0} MB; {answered_during_the_flood} normal answers during the flood, the slowest in {slowest:?}");
    forget(&url, &stream, &namespace).await;
}

/// The growth `docs/operations.md` states for junk bodies at their limits (the default
/// `max_ingest_in_flight` of 8 posts of 4 MiB at once, each held about five times while decoded).
const JUNK_GROWTH_MB: f64 = 300.0;

/// Runs the binary; whether it succeeded, stdout, and stderr.
fn sellable(args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sellable")).args(args).env_remove("SELLABLE__SERVE__KEYS").output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// `sellable keys new` prints a key once (stdout) and the configuration entry of its digest
/// (stderr); the entry pasted into a configuration file is valid, a broken one is refused naming
/// the key.
#[test]
fn a_new_key_and_its_configuration_entry() {
    let (ok, key, said) = sellable(&["keys", "new", "--name", "shop", "--scope", "read,reserve"]);
    assert!(ok, "{said}");
    let key = key.trim();
    assert!(key.starts_with("sk_") && key.len() > 40, "{key}");
    let entry = &said[said.find("[[serve.keys]]").expect("the entry")..];
    assert!(entry.contains(&sellable_serving::door::digest(key)) && entry.contains("scopes = [\"read\", \"reserve\"]"), "{entry}");
    assert!(!entry.contains(key), "the configuration holds the digest, never the key");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sellable.toml");
    std::fs::write(&config, format!("[serve]\nlisten = \"127.0.0.1:9999\"\n\n{entry}")).unwrap();
    let (ok, _, said) = sellable(&["--config", config.to_str().unwrap(), "keys", "new", "--name", "other", "--scope", "admin"]);
    assert!(ok, "the pasted entry is a valid configuration: {said}");
    std::fs::write(&config, "[[serve.keys]]\nname = \"shop\"\nscopes = []\nsha256 = \"abc\"\n").unwrap();
    let (ok, _, said) = sellable(&["--config", config.to_str().unwrap(), "keys", "new", "--name", "other", "--scope", "admin"]);
    assert!(!ok && said.contains("serve.keys[shop].sha256") && said.contains("serve.keys[shop].scopes"), "{said}");
    let (ok, _, said) = sellable(&["keys", "new", "--name", "x", "--scope", "write"]);
    assert!(!ok && said.contains("unknown scope 'write'"), "{said}");
}

/// `sellable rules publish`: a directory goes live whole, as a link swapped in one step; one with
/// an error, a failing test, or that drops a whole ruleset is refused and the live link stays.
#[test]
fn rules_are_published_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, files: &[(&str, &str)]| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        for (file, text) in files {
            std::fs::write(path.join(file), text).unwrap();
        }
        path.to_str().unwrap().to_string()
    };
    let embargo = ("embargo.rules", "ruleset \"embargo\"\nrule \"no DE\" when region == \"DE\" then deny \"embargo\"\ntest \"DE\" given region = \"DE\" expect deny\n");
    let buffers = ("buffers.rules", "ruleset \"buffers\"\nrule \"buffer\" when node.seller == \"S-1\" then hold 2\n");
    let live = dir.path().join("live");
    let live_arg = live.to_str().unwrap();
    let first = write("first", &[embargo, buffers]);
    let (ok, out, said) = sellable(&["rules", "publish", &first, "--to", live_arg]);
    assert!(ok && out.contains("published 2 rule(s)"), "{out}{said}");
    assert!(live.is_symlink() && live.join("embargo.rules").is_file());
    let published = std::fs::read_link(&live).unwrap();

    let broken = write("broken", &[embargo, ("buffers.rules", "rule \"buffer\" when node.sellr == \"S-1\" then hold 2\n")]);
    let failing = write("failing", &[("embargo.rules", "rule \"no DE\" when region == \"FR\" then deny \"embargo\"\ntest \"DE\" given region = \"DE\" expect deny\n"), buffers]);
    let dropping = write("dropping", &[embargo]);
    for (candidate, why) in [(&broken, "error(s)"), (&failing, "rule test(s) failed"), (&dropping, "drop every rule of")] {
        let (ok, _, said) = sellable(&["rules", "publish", candidate, "--to", live_arg]);
        assert!(!ok && said.contains(why), "{candidate}: {said}");
        assert_eq!(std::fs::read_link(&live).unwrap(), published, "the live link stays");
    }
    let (ok, _, said) = sellable(&["rules", "publish", &dropping, "--to", live_arg, "--force"]);
    assert!(ok, "{said}");
    assert!(!live.join("buffers.rules").exists() && live.join("embargo.rules").is_file());
    assert!(published.join("buffers.rules").is_file(), "earlier releases are kept");
}
