//! JSON Schemas of every wire type and of the config file, generated from the Rust types and
//! pinned under `schemas/json/` (a golden test fails on drift).

use schemars::{JsonSchema, Schema, schema_for};

use crate::{CatalogEntry, DeadLetter, Job, JobRecord, Reply, config::ConfigFile};

/// Every published schema: (file name under `schemas/json/`, schema).
pub fn all() -> Vec<(&'static str, Schema)> {
    fn one<T: JsonSchema>(name: &'static str) -> (&'static str, Schema) {
        (name, schema_for!(T))
    }
    vec![
        one::<Job>("job.json"),
        one::<Reply>("reply.json"),
        one::<JobRecord>("job-record.json"),
        one::<DeadLetter>("dead-letter.json"),
        one::<CatalogEntry>("catalog-entry.json"),
        one::<crate::worker::WorkerBeat>("worker-beat.json"),
        one::<crate::ProgressEvent>("progress-event.json"),
        one::<crate::LogEvent>("log-event.json"),
        one::<crate::InputRequestEvent>("input-request-event.json"),
        one::<crate::TaskEvent>("task-event.json"),
        one::<crate::InputAnswer>("input-answer.json"),
        one::<crate::InputAck>("input-ack.json"),
        one::<crate::ResourceUpdatedEvent>("resource-updated-event.json"),
        one::<crate::CancelRequest>("cancel-request.json"),
        one::<crate::api::JobSubmission>("job-submission.json"),
        one::<crate::api::Accepted>("accepted.json"),
        one::<crate::api::ApiError>("api-error.json"),
        one::<crate::api::BatchAccepted>("batch-accepted.json"),
        one::<crate::batch::BatchRecord>("batch-record.json"),
        one::<crate::batch::BatchStatus>("batch-status.json"),
        one::<crate::batch::BatchResultLine>("batch-result-line.json"),
        one::<crate::DoneEvent>("done-event.json"),
        one::<crate::schedule::ScheduleSpec>("schedule-spec.json"),
        one::<crate::schedule::Schedule>("schedule.json"),
        one::<crate::schedule::Fired>("schedule-fired.json"),
        one::<crate::audit::AuditBatch>("audit-batch.json"),
        one::<crate::audit::AuditRecord>("audit-record.json"),
        one::<crate::health::HealthRecord>("health-record.json"),
        one::<crate::health::Alert>("alert.json"),
        one::<crate::status::StatusReport>("status-report.json"),
        one::<ConfigFile>("config.json"),
    ]
}

/// Every pinned schema file under `schemas/json/`, rendered (the OpenAPI document, pinned
/// beside them, is the dispatcher's: `mcpq_dispatcher::api::openapi`).
pub fn pinned() -> Vec<(&'static str, String)> {
    all()
        .into_iter()
        .map(|(name, schema)| (name, render(&schema)))
        .collect()
}

/// A schema as pinned on disk: pretty JSON with a final newline.
pub fn render(schema: &impl serde::Serialize) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}
