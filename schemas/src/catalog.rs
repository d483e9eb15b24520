//! Tool catalogs: what each upstream server offers, written by workers to the `mcpq_catalog`
//! KV bucket (key = server name) and watched by dispatchers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One server's tools as its upstream last listed them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogEntry {
    pub v: u32,
    pub server: String,
    /// The upstream's tools, exactly as its `tools/list` returned them.
    pub tools: Vec<rmcp::model::Tool>,
    pub updated_at_ms: u64,
    pub worker_id: String,
}
