//! Reading a job message: bytes and subject in, a [`Job`] or the reason it is malformed out.
//! Pure, so every malformed shape is tested without a server.

use mcpq_schemas::{ErrorKind, Job, JobError, names::ENVELOPE_VERSION};

/// Reads `payload`, taken from `server`'s queue, as a job for `server`; a job without
/// `submittedAtMs` gets `stored_at_ms`, when JetStream stored it.
pub(crate) fn decode(server: &str, payload: &[u8], stored_at_ms: u64) -> Result<Job, JobError> {
    let malformed = |message: String| JobError::new(ErrorKind::MalformedJob, message);
    let invalid = |e: mcpq_schemas::check::Invalid| malformed(e.to_string());
    if payload.is_empty() {
        return Err(malformed(
            "empty message body (expected a JSON job envelope, see schemas/json/job.json)".into(),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
        malformed(format!(
            "body is not JSON: {e} (expected a job envelope, see schemas/json/job.json)"
        ))
    })?;
    match value.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(ENVELOPE_VERSION) => {}
        Some(v) => {
            return Err(malformed(format!(
                "envelope version {v} is not supported (this worker reads version {ENVELOPE_VERSION})"
            )));
        }
        None => {
            return Err(malformed(format!(
                "missing envelope version: set \"v\": {ENVELOPE_VERSION}"
            )));
        }
    }
    let mut job: Job = serde_json::from_value(value).map_err(|e| {
        malformed(format!(
            "body is not a valid job envelope: {e} (see schemas/json/job.json)"
        ))
    })?;
    if job.server != server {
        return Err(malformed(format!(
            "job is for server {:?} but was published to server {server:?}'s queue",
            job.server
        )));
    }
    if job.request.method.is_empty() {
        return Err(malformed(
            "request.method is empty (e.g. \"tools/call\")".into(),
        ));
    }
    if let Some(key) = &job.idempotency_key {
        mcpq_schemas::check::idempotency_key("idempotencyKey", key).map_err(invalid)?;
    }
    if let Some(traceparent) = &job.traceparent {
        mcpq_schemas::check::traceparent("traceparent", traceparent).map_err(invalid)?;
    }
    if job.submitted_at_ms == 0 {
        job.submitted_at_ms = stored_at_ms;
    }
    Ok(job)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use mcpq_schemas::McpRequest;

    use super::*;

    fn good() -> Job {
        Job::new("time", McpRequest::call_tool("now", None))
    }

    #[test]
    fn a_valid_job_reads_back_unchanged() {
        let job = good();
        let bytes = serde_json::to_vec(&job).unwrap();
        assert_eq!(decode("time", &bytes, 7).unwrap(), job);
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let mut value = serde_json::to_value(good()).unwrap();
        value["fromTheFuture"] = serde_json::json!(true);
        assert!(decode("time", &serde_json::to_vec(&value).unwrap(), 7).is_ok());
    }

    #[test]
    fn a_job_without_its_submission_time_gets_the_stored_time() {
        let mut value = serde_json::to_value(good()).unwrap();
        value.as_object_mut().unwrap().remove("submittedAtMs");
        let job = decode(
            "time",
            &serde_json::to_vec(&value).unwrap(),
            1_700_000_000_000,
        )
        .unwrap();
        assert_eq!(job.submitted_at_ms, 1_700_000_000_000);
    }

    #[test]
    fn every_malformed_shape_says_what_is_wrong() {
        let mut wrong_version = serde_json::to_value(good()).unwrap();
        wrong_version["v"] = serde_json::json!(9);
        let mut no_id = serde_json::to_value(good()).unwrap();
        no_id.as_object_mut().unwrap().remove("id");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "empty"),
            (b"{not json".to_vec(), "not JSON"),
            (
                b"{\"server\":\"time\"}".to_vec(),
                "missing envelope version",
            ),
            (serde_json::to_vec(&wrong_version).unwrap(), "version 9"),
            (serde_json::to_vec(&no_id).unwrap(), "missing field `id`"),
            (serde_json::to_vec(&good()).unwrap(), "server \"time\""),
        ];
        for (i, (bytes, word)) in cases.iter().enumerate() {
            let server = if i == 5 { "other" } else { "time" };
            let err = decode(server, bytes, 7).unwrap_err();
            assert_eq!(err.kind, ErrorKind::MalformedJob);
            assert!(
                err.message.contains(word),
                "case {i}: {:?} lacks {word:?}",
                err.message
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod properties {
    use mcpq_schemas::{Lane, McpRequest};
    use proptest::prelude::*;

    use super::*;

    fn job() -> impl Strategy<Value = Job> {
        (
            any::<String>(),
            proptest::option::of("[ -~]{1,64}"),
            proptest::option::of(any::<u64>()),
            prop_oneof![Just(Lane::High), Just(Lane::Normal), Just(Lane::Low)],
            1u64..,
            proptest::option::of(any::<String>()),
        )
            .prop_map(|(tool, key, deadline, lane, submitted, principal)| {
                let mut job = Job::new("srv", McpRequest::call_tool(tool, None));
                if let Some(key) = key {
                    job = job.with_idempotency_key(key);
                }
                job.deadline_ms = deadline;
                job.lane = lane;
                job.submitted_at_ms = submitted;
                job.owned_by(
                    principal,
                    &mcpq_schemas::seal::SigningKey::from_secret("test"),
                )
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(e) = decode("srv", &bytes, 1) {
                prop_assert_eq!(e.kind, ErrorKind::MalformedJob);
                prop_assert!(!e.message.is_empty());
            }
        }

        #[test]
        fn arbitrary_json_values_never_panic(text in "\\{(\"[a-zA-Z]{1,12}\": ?(-?[0-9]{1,22}|\"[^\"]{0,12}\"|null|true|\\{\\}|\\[\\]), ?){0,8}\"v\": ?1\\}") {
            let _ = decode("srv", text.as_bytes(), 1);
        }

        #[test]
        fn valid_jobs_round_trip(job in job()) {
            let bytes = serde_json::to_vec(&job).unwrap();
            prop_assert_eq!(decode("srv", &bytes, 1).unwrap(), job);
        }
    }
}
