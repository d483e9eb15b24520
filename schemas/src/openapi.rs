//! The component schemas of the dispatcher's `/v1` OpenAPI document, built from the same Rust
//! types as the wire schemas (schemars). The paths come from the handlers themselves
//! (`mcpq_dispatcher::api`, `utoipa::path` beside each one); the document is served at
//! `/v1/openapi.json` and pinned as `schemas/json/openapi.json`.

use schemars::{JsonSchema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value};

use crate::{
    JobRecord,
    api::{Accepted, ApiError, BatchAccepted, JobSubmission},
    batch::{BatchResultLine, BatchStatus},
    schedule::{Schedule, ScheduleCreated, ScheduleSpec, ScheduleView},
};

/// Every schema the `/v1` paths name, and those they reach, by name: where
/// `#/components/schemas/<name>` points.
pub fn schemas() -> Map<String, Value> {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "#/components/schemas/".into())
        .into_generator();
    named::<JobSubmission>(&mut generator);
    named::<Accepted>(&mut generator);
    named::<ApiError>(&mut generator);
    named::<JobRecord>(&mut generator);
    named::<BatchAccepted>(&mut generator);
    named::<BatchStatus>(&mut generator);
    named::<BatchResultLine>(&mut generator);
    named::<ScheduleSpec>(&mut generator);
    named::<Schedule>(&mut generator);
    named::<ScheduleView>(&mut generator);
    named::<ScheduleCreated>(&mut generator);
    generator.take_definitions(true)
}

fn named<T: JsonSchema>(generator: &mut SchemaGenerator) {
    let _ = generator.subschema_for::<T>();
}

/// The types the handlers name as bodies, known to utoipa by name only: a path refers to
/// `#/components/schemas/<name>`, and [`schemas`] (schemars) says what is there — one schema
/// per type, never a second derive to keep in step.
macro_rules! by_name {
    ($($t:ident),* $(,)?) => {$(
        impl utoipa::PartialSchema for $t {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::RefOr::Ref(utoipa::openapi::Ref::from_schema_name(stringify!($t)))
            }
        }
        impl utoipa::ToSchema for $t {}
    )*};
}

by_name!(
    JobSubmission,
    Accepted,
    ApiError,
    JobRecord,
    BatchAccepted,
    BatchStatus,
    BatchResultLine,
    ScheduleSpec,
    Schedule,
    ScheduleView,
    ScheduleCreated,
);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_named_body_has_its_schema_under_the_same_name() {
        let schemas = schemas();
        for name in [
            <JobSubmission as utoipa::ToSchema>::name(),
            <Accepted as utoipa::ToSchema>::name(),
            <ApiError as utoipa::ToSchema>::name(),
            <JobRecord as utoipa::ToSchema>::name(),
            <BatchAccepted as utoipa::ToSchema>::name(),
            <BatchStatus as utoipa::ToSchema>::name(),
            <BatchResultLine as utoipa::ToSchema>::name(),
            <ScheduleSpec as utoipa::ToSchema>::name(),
            <Schedule as utoipa::ToSchema>::name(),
            <ScheduleView as utoipa::ToSchema>::name(),
            <ScheduleCreated as utoipa::ToSchema>::name(),
        ] {
            assert!(schemas.contains_key(name.as_ref()), "{name}");
        }
    }
}
