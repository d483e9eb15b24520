//! Catalogs: what each upstream server offers — tools, resources, resource templates, prompts —
//! written by workers to the `mcpq_catalog` KV bucket (key = server name) and watched by
//! dispatchers, which serve every list from it without an upstream round trip.

use rmcp::model::{Prompt, Resource, ResourceTemplate, ServerCapabilities, Tool};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One server's offer as its upstream last listed it. Lists are exactly as the upstream's
/// `tools/list`, `resources/list`, `resources/templates/list` and `prompts/list` gave them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogEntry {
    pub v: u32,
    pub server: String,
    /// The MCP revision the worker negotiated with the upstream (e.g. `2025-06-18`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    /// What the upstream declared it can do (`resources`, `prompts`, `completions`,
    /// `logging`...).
    #[serde(default)]
    pub capabilities: ServerCapabilities,
    pub tools: Vec<Tool>,
    #[serde(default)]
    pub resources: Vec<Resource>,
    #[serde(default)]
    pub resource_templates: Vec<ResourceTemplate>,
    #[serde(default)]
    pub prompts: Vec<Prompt>,
    pub updated_at_ms: u64,
    pub worker_id: String,
    /// Set when the entry is too large for one NATS message: the whole entry is the object
    /// named here (Object Store `mcpq_catalogs`, object `<server>`), and this one lists
    /// nothing. Readers fetch it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<crate::BlobRef>,
}

impl CatalogEntry {
    /// Whether the two entries list the same offer (times and writers aside).
    pub fn same_offer(&self, other: &CatalogEntry) -> bool {
        self.protocol_version == other.protocol_version
            && self.capabilities == other.capabilities
            && self.tools == other.tools
            && self.resources == other.resources
            && self.resource_templates == other.resource_templates
            && self.prompts == other.prompts
    }
}
