//! Fidelity: third-party MCP servers (npm server-everything, server-filesystem, server-memory,
//! server-sequential-thinking; PyPI mcp-server-git and mcp-server-time), each reached directly
//! over stdio and through mcpq in both client revisions, compared byte for byte with no SDK in
//! between (`mcpq_tests::raw`): the capabilities each declares, every definition it lists, the
//! methods it does not serve, and real calls. What mcpq changes is exactly what docs/mcp.md
//! says it changes: names and URIs on `/mcp`, `resultType` on 2026-07-28 answers, `listChanged`
//! on every list it declares, and its own Tasks extension.

use std::path::Path;

use mcpq_tests::{
    python_sdk,
    raw::{Era, HttpPeer, StdioPeer, worker_capabilities},
    required_program,
    stack::Stack,
};
use serde_json::{Value, json};

/// One third-party server: how to start it, and calls whose answers do not depend on time or
/// on which process answers.
struct Upstream {
    name: &'static str,
    program: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    calls: Vec<(&'static str, Value)>,
}

fn upstreams(dir: &Path) -> Vec<Upstream> {
    let files = dir.join("files");
    let repo = dir.join("repo");
    let text = |p: &Path| p.display().to_string();
    vec![
        Upstream {
            name: "everything",
            program: "mcp-server-everything",
            args: vec!["stdio".into()],
            env: vec![],
            calls: vec![
                ("echo", json!({"message": "fidelity"})),
                ("get-sum", json!({"a": 2, "b": 40})),
                ("get-tiny-image", json!({})),
                (
                    "get-annotated-message",
                    json!({"messageType": "error", "includeImage": true}),
                ),
                ("get-resource-links", json!({"count": 2})),
                ("get-structured-content", json!({"location": "New York"})),
            ],
        },
        Upstream {
            name: "filesystem",
            program: "mcp-server-filesystem",
            args: vec![text(&files)],
            env: vec![],
            calls: vec![
                ("list_allowed_directories", json!({})),
                (
                    "read_text_file",
                    json!({"path": text(&files.join("notes.md"))}),
                ),
                ("list_directory", json!({"path": text(&files)})),
                (
                    "get_file_info",
                    json!({"path": text(&files.join("missing"))}),
                ),
            ],
        },
        Upstream {
            name: "memory",
            program: "mcp-server-memory",
            args: vec![],
            // Each process its own empty graph (named per process below).
            env: vec![("MEMORY_FILE_PATH", String::new())],
            calls: vec![
                (
                    "create_entities",
                    json!({"entities": [{"name": "mcpq", "entityType": "queue", "observations": ["durable"]}]}),
                ),
                ("read_graph", json!({})),
                ("search_nodes", json!({"query": "queue"})),
            ],
        },
        Upstream {
            name: "thinking",
            program: "mcp-server-sequential-thinking",
            args: vec![],
            env: vec![],
            calls: vec![(
                "sequentialthinking",
                json!({"thought": "one", "thoughtNumber": 1, "totalThoughts": 1, "nextThoughtNeeded": false}),
            )],
        },
        Upstream {
            name: "git",
            program: "mcp-server-git",
            args: vec!["--repository".into(), text(&repo)],
            env: vec![],
            calls: vec![
                ("git_status", json!({"repo_path": text(&repo)})),
                ("git_log", json!({"repo_path": text(&repo), "max_count": 1})),
                (
                    "git_show",
                    json!({"repo_path": text(&repo), "revision": "nope"}),
                ),
            ],
        },
        Upstream {
            name: "time",
            program: "mcp-server-time",
            args: vec!["--local-timezone".into(), "UTC".into()],
            env: vec![],
            calls: vec![(
                "convert_time",
                json!({"source_timezone": "Europe/Paris", "time": "12:00", "target_timezone": "Asia/Tokyo"}),
            )],
        },
    ]
}

/// A directory of files for the filesystem server and a git repository with one commit.
fn prepare(dir: &Path) {
    let files = dir.join("files");
    std::fs::create_dir_all(files.join("sub")).unwrap();
    std::fs::write(files.join("notes.md"), "# notes\nkept as they are\n").unwrap();
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("README"), "fidelity\n").unwrap();
    let git = |args: &[&str]| {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .status()
            .expect("run git");
        assert!(status.success(), "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
        "add",
        "README",
    ]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
        "commit",
        "-q",
        "-m",
        "first",
    ]);
}

fn config(upstreams: &[Upstream], dir: &Path) -> String {
    let mut yaml = String::new();
    for u in upstreams {
        yaml.push_str(&format!(
            "  - name: {}\n    type: stdio\n    command: {}\n    args: {}\n    timeout: 20s\n",
            u.name,
            required_program(u.program).display(),
            serde_json::to_string(&u.args).unwrap()
        ));
        if !u.env.is_empty() {
            let env: serde_json::Map<String, Value> = u
                .env
                .iter()
                .map(|(k, _)| (k.to_string(), json!(memory_file(dir, "mcpq"))))
                .collect();
            yaml.push_str(&format!("    env: {}\n", Value::Object(env)));
        }
    }
    yaml
}

fn memory_file(dir: &Path, who: &str) -> String {
    dir.join(format!("memory-{who}.jsonl"))
        .display()
        .to_string()
}

/// The lists, by the capability that declares them: (capability, method, result field).
const LISTS: [(&str, &str, &str); 4] = [
    ("tools", "tools/list", "tools"),
    ("resources", "resources/list", "resources"),
    ("resources", "resources/templates/list", "resourceTemplates"),
    ("prompts", "prompts/list", "prompts"),
];

fn same(what: &str, direct: &Value, through: &Value) {
    let mut differences = Vec::new();
    differ("", direct, through, &mut differences);
    assert!(
        differences.is_empty(),
        "{what}: not as the server said it (directly / through mcpq):\n{}",
        differences.join("\n")
    );
}

/// Where two JSON values differ, each place as `path: directly / through mcpq`.
fn differ(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    fn short(v: Option<&Value>) -> String {
        let text = v.map_or("(absent)".to_string(), Value::to_string);
        if text.len() > 120 {
            format!("{}…", &text[..120])
        } else {
            text
        }
    }
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                let at = format!("{path}/{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => differ(&at, x, y, out),
                    (x, y) => out.push(format!("{at}: {} / {}", short(x), short(y))),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                differ(&format!("{path}/{i}"), x, y, out);
            }
        }
        // A number is its value: `1` and `1.0` are one JSON number (results are read through
        // rmcp's model, which writes a float field such as a priority as `1.0`).
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a != b => out.push(format!("{path}: {} / {}", short(Some(a)), short(Some(b)))),
        _ => {}
    }
}

/// A result as written in `revision`, less the `resultType` that 2026-07-28 adds (a 2025-era
/// result must not have one): what remains is what the server said.
fn in_revision(mut result: Value, revision: &str) -> Value {
    let Some(object) = result.as_object_mut() else {
        return result;
    };
    let result_type = object.remove("resultType");
    if revision == "2026-07-28" {
        assert_eq!(
            result_type,
            Some(json!("complete")),
            "a 2026-07-28 result says what it is"
        );
    } else {
        assert_eq!(result_type, None, "a {revision} result has no resultType");
    }
    result
}

/// The aggregated endpoint's name for a definition: tools and prompts `<server>__<name>`,
/// resources and templates `mcpq://<server>/<uri>`.
fn aggregated(server: &str, field: &str, mut definition: Value) -> Value {
    let (key, renamed) = match field {
        "tools" | "prompts" => (
            "name",
            format!("{server}__{}", definition["name"].as_str().unwrap()),
        ),
        "resources" => (
            "uri",
            format!("mcpq://{server}/{}", definition["uri"].as_str().unwrap()),
        ),
        _ => (
            "uriTemplate",
            format!(
                "mcpq://{server}/{}",
                definition["uriTemplate"].as_str().unwrap()
            ),
        ),
    };
    definition[key] = json!(renamed);
    definition
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_servers_reach_clients_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path());
    let upstreams = upstreams(dir.path());
    let stack = Stack::start(&config(&upstreams, dir.path())).await;
    let mut checked = 0usize;
    let mut revisions = std::collections::BTreeSet::new();
    for upstream in &upstreams {
        let env: Vec<(&str, String)> = upstream
            .env
            .iter()
            .map(|(k, _)| (*k, memory_file(dir.path(), "direct")))
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let args: Vec<&str> = upstream.args.iter().map(String::as_str).collect();
        let mut direct = StdioPeer::start(&required_program(upstream.program), &args, &env).await;
        let declared = direct.initialized["capabilities"].clone();
        revisions.insert(direct.revision());
        let url = stack.server_url(upstream.name);
        let mut sessions = HttpPeer::open(&url, Era::Sessions, worker_capabilities()).await;
        let mut stateless = HttpPeer::open(&url, Era::Stateless, worker_capabilities()).await;
        let mut everything =
            HttpPeer::open(&stack.mcp_url(), Era::Stateless, worker_capabilities()).await;
        let name = upstream.name;

        // Capabilities: what the server declared, and only that (mcpq adds listChanged to
        // every list and its own Tasks extension).
        for peer in [&sessions, &stateless] {
            let through = &peer.initialized["capabilities"];
            for capability in ["tools", "resources", "prompts", "completions", "logging"] {
                assert_eq!(
                    through.get(capability).is_some(),
                    declared.get(capability).is_some(),
                    "{name}: capability {capability:?}: declared {declared}, through mcpq {through}"
                );
            }
            assert_eq!(
                through["resources"]["subscribe"].as_bool().unwrap_or(false),
                declared["resources"]["subscribe"]
                    .as_bool()
                    .unwrap_or(false),
                "{name}: resources.subscribe"
            );
            checked += 1;
        }

        // Every list, definition for definition; a list the server does not serve is refused
        // through mcpq as the server refuses it.
        for (capability, method, field) in LISTS {
            let said = direct.list(method, field).await;
            for (era, peer) in [
                ("2025-11-25", &mut sessions),
                ("2026-07-28", &mut stateless),
            ] {
                let through = peer.list(method, field).await;
                match (&said, &through) {
                    (Ok(said), Ok(through)) => {
                        same(
                            &format!("{name} {method} ({era})"),
                            &json!(said),
                            &json!(through),
                        );
                    }
                    (Err(said), Err(through)) => assert_eq!(
                        said["code"], through["code"],
                        "{name} {method} ({era}): refused directly with {said}, through mcpq with {through}"
                    ),
                    _ => panic!(
                        "{name} {method} ({era}): directly {said:?}, through mcpq {through:?} (declared {capability}: {})",
                        declared.get(capability).is_some()
                    ),
                }
                checked += 1;
            }
            if let Ok(said) = &said {
                let all = everything.list(method, field).await.unwrap();
                let prefix = match field {
                    "tools" | "prompts" => format!("{name}__"),
                    _ => format!("mcpq://{name}/"),
                };
                let key = match field {
                    "tools" | "prompts" => "name",
                    "resources" => "uri",
                    _ => "uriTemplate",
                };
                let ours: Vec<Value> = all
                    .into_iter()
                    .filter(|d| d[key].as_str().is_some_and(|n| n.starts_with(&prefix)))
                    .collect();
                let renamed: Vec<Value> = said
                    .iter()
                    .map(|d| aggregated(name, field, d.clone()))
                    .collect();
                same(
                    &format!("{name} {method} on /mcp"),
                    &json!(renamed),
                    &json!(ours),
                );
                checked += 1;
            }
        }

        // Real calls: the same answer, field for field, in each client's revision.
        let revision = direct.revision();
        for (tool, arguments) in &upstream.calls {
            let params = json!({"name": tool, "arguments": arguments});
            for (era, peer) in [
                ("2025-11-25", &mut sessions),
                ("2026-07-28", &mut stateless),
            ] {
                // Asked directly each time too: a stateful server (memory) answers a second
                // time differently, in both processes alike.
                let said = direct.request("tools/call", params.clone()).await;
                let through = peer.request("tools/call", params.clone()).await;
                let what = format!("{name} ({revision}) {tool}, client on {era}");
                match (said, through) {
                    (Ok(said), Ok(through)) => same(
                        &what,
                        &in_revision(said, &revision),
                        &in_revision(through, era),
                    ),
                    (Err(said), Err(through)) => same(&what, &said["message"], &through["message"]),
                    (said, through) => {
                        panic!("{what}: directly {said:?}, through mcpq {through:?}")
                    }
                }
                checked += 1;
            }
        }
        direct.stop().await;
    }
    assert!(checked > 100, "only {checked} comparisons made");
    assert!(
        revisions.contains("2026-07-28") && revisions.iter().any(|r| r.starts_with("2025-")),
        "upstreams of both eras: {revisions:?}"
    );
    stack.stop().await;
}

/// A server may list tools according to what its client declared (server-everything offers
/// its sampling, elicitation and roots tools only to clients that can answer them). mcpq's
/// worker declares all it can relay, so the catalog is the most capable view: a client that
/// declared less sees those tools too, and a call whose question it cannot answer is told so
/// at once, naming the capability. A client that declared it is asked, in either revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn questions_a_client_cannot_answer_are_refused_by_name_and_url_elicitation_is_relayed() {
    let stack = Stack::start(&format!(
        "  - name: everything\n    type: stdio\n    command: {}\n    args: [\"stdio\"]\n    timeout: 20s\n",
        required_program("mcp-server-everything").display()
    ))
    .await;
    let url = stack.server_url("everything");
    let arguments = json!({"url": "https://example.com/authorize", "message": "sign in"});
    for era in [Era::Sessions, Era::Stateless] {
        let mut bare = HttpPeer::open(&url, era, json!({})).await;
        let tools = bare.list("tools/list", "tools").await.unwrap();
        let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
        for needs_a_capability in [
            "trigger-url-elicitation",
            "trigger-sampling-request",
            "get-roots-list",
        ] {
            assert!(
                names.contains(&needs_a_capability),
                "{era:?}: {needs_a_capability} not in {names:?}"
            );
        }
        let result = bare
            .request(
                "tools/call",
                json!({"name": "trigger-url-elicitation", "arguments": arguments}),
            )
            .await
            .unwrap();
        assert_eq!(result["isError"], json!(true), "{era:?}: {result}");
        let text = result["content"][0]["text"].as_str().unwrap_or_default();
        assert!(
            text.contains(r#"declared no "elicitation.url" capability"#),
            "{era:?}: the refusal names what is missing: {text}"
        );
        // Form mode only: still not URL mode.
        let mut form = HttpPeer::open(&url, era, json!({"elicitation": {"form": {}}})).await;
        let result = form
            .request(
                "tools/call",
                json!({"name": "trigger-url-elicitation", "arguments": arguments}),
            )
            .await
            .unwrap();
        assert_eq!(
            result["isError"],
            json!(true),
            "{era:?} form only: {result}"
        );
    }
    for mode in ["legacy", "auto"] {
        let out = python_sdk(
            &url,
            mode,
            json!([["call_tool", "trigger-url-elicitation", arguments]]),
            &[],
        )
        .await;
        let asked = &out["asked"][0];
        assert_eq!(asked["method"], "elicitation/create", "{mode}: {out}");
        assert_eq!(asked["params"]["mode"], "url", "{mode}: {out}");
        assert_eq!(asked["params"]["url"], arguments["url"], "{mode}: {out}");
        let result = &out["steps"][0]["ok"];
        assert_eq!(result["isError"], json!(false), "{mode}: {out}");
        assert!(
            result["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("completed the URL elicitation")),
            "{mode}: {out}"
        );
    }
    stack.stop().await;
}
