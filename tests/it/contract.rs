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
    let st = root.join(".deps/venv/bin/st");
    assert!(st.exists(), "{} is missing: run scripts/setup.sh (it installs schemathesis)", st.display());
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
        .current_dir(lake.root());
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "schemathesis found answers that break the contract:\n{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains("Tested: 17"), "every operation is tested:\n{report}");
    forget(&url, &stream, &namespace).await;
}
