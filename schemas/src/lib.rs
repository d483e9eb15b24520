//! mcpq's contract with everything outside a process: the job envelope, replies, job records,
//! dead letters, catalog entries, the NATS names and topology, and the config file.
//!
//! Only this crate puts serde on wire types. Wire types tolerate unknown fields so that mixed
//! versions interoperate; config types reject them so that a typo never passes silently.

pub mod api;
pub mod audit;
pub mod batch;
pub mod bridge;
pub mod catalog;
pub mod check;
pub mod config;
pub mod dead_letter;
pub mod done;
pub mod health;
pub mod job;
pub mod json_schema;
pub mod lane;
pub mod metrics;
pub mod names;
pub mod nats;
pub mod openapi;
pub mod record;
pub mod redact;
pub mod schedule;
pub mod seal;
pub mod status;
pub mod sync;
pub mod trace;
pub mod worker;

pub use catalog::{CatalogEntry, Listed};
pub use dead_letter::{Attempt, DeadLetter};
pub use job::{Job, JsonObject, Lane, McpRequest};
pub use record::{
    BlobRef, CancelRequest, DoneEvent, ErrorKind, InputAck, InputAnswer, InputRequestEvent,
    JobError, JobRecord, JobStatus, LogEvent, LogMessage, Outcome, PendingInput, Progress,
    ProgressEvent, Reply, ResourceUpdatedEvent, TaskEvent,
};

/// Unix time now, in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
