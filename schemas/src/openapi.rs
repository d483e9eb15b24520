//! The OpenAPI 3.1 document of the dispatcher's HTTP jobs API, built from the same Rust types
//! as the wire schemas. Served at `/v1/openapi.json` and pinned as `schemas/json/openapi.json`.

use schemars::{JsonSchema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Value, json};

use crate::{
    JobRecord,
    api::{Accepted, ApiError, BatchAccepted, JobSubmission},
    batch::{BatchResultLine, BatchStatus},
};

/// The document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "#/components/schemas/".into())
        .into_generator();
    let submission = reference::<JobSubmission>(&mut generator);
    let accepted = reference::<Accepted>(&mut generator);
    let error = reference::<ApiError>(&mut generator);
    let record = reference::<JobRecord>(&mut generator);
    let batch_accepted = reference::<BatchAccepted>(&mut generator);
    let batch_status = reference::<BatchStatus>(&mut generator);
    let batch_line = reference::<BatchResultLine>(&mut generator);
    let schemas = generator.take_definitions(true);

    let json_body = |schema: &Value| json!({"content": {"application/json": {"schema": schema}}});
    let response = |description: &str, schema: &Value| {
        let mut r = json_body(schema);
        r["description"] = json!(description);
        r
    };
    let failure = |description: &str| response(description, &error);
    let job_id = json!({
        "name": "id", "in": "path", "required": true,
        "schema": {"type": "string", "format": "uuid"}
    });
    let batch_id = json!({
        "name": "id", "in": "path", "required": true,
        "schema": {"type": "string", "format": "uuid"}
    });
    let idempotency_key = json!({
        "name": "Idempotency-Key", "in": "header", "required": false,
        "description": "Submissions with the same key are one job (one batch for /v1/batches).",
        "schema": {"type": "string"}
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "mcpq jobs API",
            "version": "1",
            "description": "Submit MCP tool calls as durable jobs, read them back later, wait for them, cancel them, and run them in batches. Every error body is an ApiError with a stable code."
        },
        "paths": {
            "/v1/jobs": {
                "post": {
                    "operationId": "submitJob",
                    "summary": "Queue one tool call; answers at once with the job id",
                    "parameters": [idempotency_key],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": submission}}},
                    "responses": {
                        "202": response("Queued (or a duplicate of a job with the same idempotency key)", &accepted),
                        "400": failure("The body is not a job submission, or a field is out of range (the message names it)"),
                        "404": failure("Unknown server or tool; nothing was queued"),
                        "413": failure("The request does not fit in one NATS message (code too_large); nothing was queued"),
                        "429": failure("Over the caller's limits (rate_limited) or the server's queue is full (queue_full); retry after Retry-After"),
                        "503": failure("NATS did not accept the job; retry")
                    }
                }
            },
            "/v1/jobs/{id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "The job's record: status, attempts, progress, result or error",
                    "parameters": [job_id],
                    "responses": {
                        "200": response("The record", &record),
                        "404": failure("No such job, or its record expired")
                    }
                },
                "delete": {
                    "operationId": "cancelJob",
                    "summary": "Cancel the job: a queued job never runs, a running one has its upstream request cancelled",
                    "parameters": [job_id],
                    "responses": {
                        "202": response("Cancellation requested; the record shows it", &record),
                        "404": failure("No such job"),
                        "409": failure("The job has already ended")
                    }
                }
            },
            "/v1/jobs/{id}/wait": {
                "get": {
                    "operationId": "waitJob",
                    "summary": "Long poll: the record once the job has ended, or when the timeout passes",
                    "parameters": [job_id, {
                        "name": "timeout", "in": "query", "required": false,
                        "description": "How long to wait, e.g. 30s or 500ms (default 30s, at most 5m)",
                        "schema": {"type": "string"}
                    }],
                    "responses": {
                        "200": response("The job has ended", &record),
                        "202": response("Not ended within the timeout; the current record", &record),
                        "404": failure("No such job")
                    }
                }
            },
            "/v1/batches": {
                "post": {
                    "operationId": "submitBatch",
                    "summary": "Queue many calls: one JobSubmission per line (JSON lines)",
                    "parameters": [idempotency_key],
                    "requestBody": {"required": true, "content": {"application/x-ndjson": {"schema": submission}}},
                    "responses": {
                        "202": response("Queued", &batch_accepted),
                        "400": failure("A line is not a job submission (the message names the line); nothing was queued"),
                        "404": failure("A line names an unknown server or tool; nothing was queued"),
                        "413": failure("More than 10000 lines, or a call that does not fit in one NATS message (code too_large); nothing was queued"),
                        "429": failure("Over the caller's limits (rate_limited) or a queue is full (queue_full); retry after Retry-After")
                    }
                }
            },
            "/v1/batches/{id}": {
                "get": {
                    "operationId": "getBatch",
                    "summary": "Counts of the batch's jobs by status",
                    "parameters": [batch_id],
                    "responses": {
                        "200": response("The counts", &batch_status),
                        "404": failure("No such batch")
                    }
                }
            },
            "/v1/batches/{id}/results": {
                "get": {
                    "operationId": "getBatchResults",
                    "summary": "One line per call, in input order (JSON lines)",
                    "parameters": [batch_id],
                    "responses": {
                        "200": {"description": "The lines", "content": {"application/x-ndjson": {"schema": batch_line}}},
                        "404": failure("No such batch")
                    }
                }
            }
        },
        "components": {"schemas": schemas}
    })
}

fn reference<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    generator.subschema_for::<T>().to_value()
}
