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
        one::<ConfigFile>("config.json"),
    ]
}

/// A schema as pinned on disk: pretty JSON with a final newline.
pub fn render(schema: &Schema) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}
