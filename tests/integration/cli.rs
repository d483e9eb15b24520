//! The `mcpq` binary: `mcpq call` as a pipeline would use it from the shell, and `mcpq config
//! check` naming the fields of a bad config.

use std::process::Command;

use mcpq_tests::{fixture::HttpFixture, mcpq_bin, stack::Stack};

use crate::two_fixtures;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcpq_call_prints_the_result_as_json() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&two_fixtures(&web.url())).await;
    let url = stack.nats.url();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(mcpq_bin())
            .args([
                "call",
                "--nats",
                &url,
                "web",
                "math.add",
                r#"{"a": 1, "b": 2}"#,
            ])
            .env_remove("MCPQ_CONFIG")
            .output()
            .expect("run mcpq call")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "mcpq call failed: {stderr}");
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(crate::first_text(&result), "3");

    // With a config at hand, a server it does not name is refused at once.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mcp.yaml");
    std::fs::write(
        &config,
        format!("version: \"1.0\"\nservers:\n{}", two_fixtures(&web.url())),
    )
    .unwrap();
    let url = stack.nats.url();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(mcpq_bin())
            .args(["call", "--nats", &url, "--config"])
            .arg(&config)
            .args(["gitlab", "echo"])
            .output()
            .expect("run mcpq call")
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown server \"gitlab\"") && stderr.contains("web, local"),
        "{stderr}"
    );
    stack.stop().await;
}

/// Runs `mcpq config check FILE`.
fn config_check(file: &std::path::Path) -> std::process::Output {
    Command::new(mcpq_bin())
        .args(["config", "check"])
        .arg(file)
        .output()
        .unwrap()
}

/// Writes `text` to a temporary config file and checks it: exit code and stderr.
fn check_text(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, text).unwrap();
    let output = config_check(&file);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn config_check_names_the_field_and_exits_64() {
    let (code, stderr) = check_text(
        "version: \"1.0\"\nservers:\n  - name: github\n    type: external\n    endpoint: \"htps://x\"\n    concurency: 4\n",
    );
    assert_eq!(code, Some(64));
    assert!(stderr.contains("servers[0].concurency"), "{stderr}");

    let (code, stderr) = check_text(
        "version: \"1.0\"\nservers:\n  - name: github\n    type: external\n    endpoint: \"htps://x\"\n",
    );
    assert_eq!(code, Some(64));
    assert!(
        stderr.contains("servers[0].endpoint") && stderr.contains("htps://x"),
        "{stderr}"
    );

    // The guide's example loads unchanged: the repo's copy, and the original where it is at hand.
    let root = mcpq_tests::repo_root();
    let original = root.join("../shared/examples/mcp-infrastructure.yaml");
    let copy = root.join("deploy/examples/mcp-infrastructure.yaml");
    for example in std::iter::once(copy).chain(original.exists().then_some(original)) {
        let output = config_check(&example);
        assert!(
            output.status.success(),
            "{}: {}",
            example.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
