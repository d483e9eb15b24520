//! The pinned JSON Schemas under `schemas/json/` match the Rust types (regenerate with
//! `make schemas`), and every pinned example message validates against its schema.

#[test]
fn pinned_json_schemas_match_the_types() {
    let dir = mcpq_tests::repo_root().join("schemas/json");
    let bless = std::env::var_os("MCPQ_BLESS").is_some();
    let mut stale = Vec::new();
    let openapi = mcpq_schemas::json_schema::render(&mcpq_dispatcher::api::openapi());
    let pinned = mcpq_schemas::json_schema::pinned()
        .into_iter()
        .chain([("openapi.json", openapi)]);
    for (name, fresh) in pinned {
        let path = dir.join(name);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &fresh).unwrap();
            continue;
        }
        let pinned = std::fs::read_to_string(&path).unwrap_or_default();
        if pinned != fresh {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/json is out of date for {stale:?}: the wire or config types changed. \
         Regenerate with `make schemas` and review the diff"
    );
}

/// The wire protocol's wire-protocol section names every stream, bucket, header and event value that
/// `schemas/src/names.rs` defines, so pipelines in other languages can rely on it.
#[test]
fn the_readme_names_every_nats_name() {
    use mcpq_schemas::names::*;
    let readme =
        std::fs::read_to_string(mcpq_tests::repo_root().join("docs/wire-protocol.md")).unwrap();
    let names = [
        JOBS_STREAM,
        DLQ_STREAM,
        RESULTS_BUCKET,
        CATALOG_BUCKET,
        WORKERS_BUCKET,
        CANCELS_BUCKET,
        BATCHES_BUCKET,
        HDR_REPLY_TO,
        HDR_JOB_ID,
        HDR_EVENT,
        HDR_MSG_ID,
        HDR_TRACEPARENT,
        HDR_REPLAY_OF,
        EVENT_REPLY,
        EVENT_PROGRESS,
        EVENT_LOG,
        EVENT_INPUT,
        EVENT_TASK,
        SESSIONS_BUCKET,
        BLOBS_BUCKET,
        AUDIT_STREAM,
        HEALTH_BUCKET,
        SCHEDULES_STREAM,
        SCHEDULES_BUCKET,
        HDR_TICK,
        CALLBACKS_STREAM,
        CALLBACKS_CONSUMER,
        DEAD_CALLBACKS_STREAM,
    ];
    let missing: Vec<_> = names
        .iter()
        .filter(|name| {
            !readme.contains(&format!("`{name}")) && !readme.contains(&format!("{name}`"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/wire-protocol.md does not name {missing:?}"
    );
    for (subject, shown) in [
        (
            job_subject("github", mcpq_schemas::Lane::High),
            "`mcpq.jobs.<server>.<lane>`",
        ),
        (dlq_subject("github"), "`mcpq.dlq.<server>`"),
        (
            consumer_name("github", mcpq_schemas::Lane::High),
            "`mcpq-<server>-<lane>`",
        ),
        (
            record_subject(&uuid::Uuid::nil()),
            "`$KV.mcpq_results.<job id>`",
        ),
        (
            input_subject(&uuid::Uuid::nil(), "q0"),
            "`mcpq.input.<job id>.<question id>`",
        ),
        (
            resource_updated_subject("github"),
            "`mcpq.events.<server>.resource_updated`",
        ),
    ] {
        assert!(
            readme.contains(shown),
            "docs/wire-protocol.md does not show {shown} (e.g. {subject})"
        );
    }
}
