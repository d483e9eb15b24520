//! Batches: many jobs submitted together under one id, counted and read back in input order.
//! The HTTP API (`/v1/batches`) and `mcpq batch run` both use these.

use futures::{StreamExt, TryStreamExt, stream};
use mcpq_schemas::{
    Job, JobRecord,
    batch::{BatchRecord, BatchResultLine, BatchStatus},
    names::{BATCHES_BUCKET, ENVELOPE_VERSION},
    now_ms,
};
use uuid::Uuid;

use crate::{Client, ClientError};

/// How many submissions or reads of one batch are in flight at once.
pub const IN_FLIGHT: usize = 64;

impl Client {
    /// Stores the batch (its job ids in order), then submits every job, `IN_FLIGHT` at a time.
    /// Submitting the same batch again (same id, same idempotent jobs) adds nothing.
    pub async fn submit_batch(
        &self,
        batch_id: Uuid,
        jobs: &[Job],
    ) -> Result<BatchRecord, ClientError> {
        let record = BatchRecord {
            v: ENVELOPE_VERSION,
            batch_id,
            created_at_ms: now_ms(),
            jobs: jobs.iter().map(|j| j.id).collect(),
            principal: jobs.first().and_then(|j| j.principal.clone()),
        };
        let fail = |source: crate::publish::BoxError| ClientError::Batch { batch_id, source };
        // Every job and the batch record must fit in a message: checked before anything is
        // written, so a batch is taken whole or not at all.
        for job in jobs {
            self.encode(job)?;
        }
        let bytes = serde_json::to_vec(&record).map_err(|e| fail(e.into()))?;
        let limit = self.max_job_bytes();
        if bytes.len() > limit {
            return Err(ClientError::BatchTooLarge {
                batch_id,
                jobs: jobs.len(),
                limit,
            });
        }
        let bucket = self.bucket(BATCHES_BUCKET).await?;
        if bucket
            .create(batch_id.to_string(), bytes.into())
            .await
            .is_err()
            && self.batch(batch_id).await?.is_none()
        {
            return Err(fail("cannot store the batch".into()));
        }
        // Owned items and a cloned client per future: borrowed ones make the future not Send.
        stream::iter(jobs.to_vec())
            .map(|job| {
                let client = self.clone();
                async move { client.submit(&job).await }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_for_each(|_| async { Ok(()) })
            .await?;
        Ok(record)
    }

    /// The stored batch, if there is one with that id.
    pub async fn batch(&self, batch_id: Uuid) -> Result<Option<BatchRecord>, ClientError> {
        self.get_json(BATCHES_BUCKET, batch_id).await
    }

    /// The records of `jobs`, in the same order (`None` where a job has none).
    pub async fn records(&self, jobs: &[Uuid]) -> Result<Vec<Option<JobRecord>>, ClientError> {
        self.fetch_records(jobs, true).await
    }

    /// [`Client::records`], with results read from the Object Store when `results`, else as
    /// stored (enough for counting).
    async fn fetch_records(
        &self,
        jobs: &[Uuid],
        results: bool,
    ) -> Result<Vec<Option<JobRecord>>, ClientError> {
        stream::iter(jobs.to_vec())
            .map(|id| {
                let client = self.clone();
                async move {
                    if results {
                        client.record(id).await
                    } else {
                        client.stored_record(id).await
                    }
                }
            })
            .buffered(IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Counts of the batch's jobs by status.
    pub async fn batch_status(&self, batch: &BatchRecord) -> Result<BatchStatus, ClientError> {
        let records = self.fetch_records(&batch.jobs, false).await?;
        Ok(BatchStatus::count(
            batch.batch_id,
            records.iter().map(|r| r.as_ref().map(|r| r.status)),
        ))
    }

    /// One result line per job of the batch, in input order.
    pub async fn batch_results(
        &self,
        batch: &BatchRecord,
    ) -> Result<Vec<BatchResultLine>, ClientError> {
        self.batch_result_lines(batch).try_collect().await
    }

    /// [`Client::batch_results`] as a stream: at most a few records (and their results) are
    /// held at once, however large the batch.
    pub fn batch_result_lines(
        &self,
        batch: &BatchRecord,
    ) -> impl futures::Stream<Item = Result<BatchResultLine, ClientError>> + Send + 'static {
        let client = self.clone();
        stream::iter(batch.jobs.clone().into_iter().enumerate())
            .map(move |(index, id)| {
                let client = client.clone();
                async move {
                    let record = client.record(id).await?;
                    Ok(BatchResultLine::new(index, id, record.as_ref()))
                }
            })
            .buffered(IN_FLIGHT)
    }
}
