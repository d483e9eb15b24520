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

/// `mcpq submit` prints a job id; `mcpq job wait` and `get` print its record; cancelling a job
/// that ended is refused (exit 1); a bad id is a usage error (exit 64).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcpq_submit_and_job_commands_work_by_id() {
    let web = HttpFixture::start().await;
    let stack = Stack::start(&two_fixtures(&web.url())).await;
    let url = stack.nats.url();
    let mcpq = move |args: &[&str]| {
        // `--nats` right after the command: `job` takes it before its subcommand.
        let output = Command::new(mcpq_bin())
            .arg(args[0])
            .args(["--nats", &url])
            .args(&args[1..])
            .env_remove("MCPQ_CONFIG")
            .output()
            .expect("run mcpq");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
        )
    };
    let run = |args: Vec<String>| {
        let mcpq = mcpq.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            mcpq(&args)
        })
    };
    let owned = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let (code, id) = run(owned(&["submit", "web", "echo", r#"{"text": "later"}"#]))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    let id: uuid::Uuid = id.parse().expect("submit prints the job id");
    let (code, waited) = run(owned(&["job", "wait", &id.to_string(), "--timeout", "30s"]))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{waited}");
    let record: mcpq_schemas::JobRecord = serde_json::from_str(&waited).unwrap();
    assert_eq!(record.status, mcpq_schemas::JobStatus::Completed);
    assert_eq!(crate::first_text(record.result.as_ref().unwrap()), "later");
    let (code, got) = run(owned(&["job", "get", &id.to_string()])).await.unwrap();
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<mcpq_schemas::JobRecord>(&got).unwrap(),
        record
    );
    let (code, _) = run(owned(&["job", "cancel", &id.to_string()]))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "a job that ended cannot be cancelled");
    let (code, _) = run(owned(&["job", "get", "not-an-id"])).await.unwrap();
    assert_eq!(code, Some(64));
    stack.stop().await;
}
