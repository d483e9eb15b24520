//! Catalogs: what each upstream server offers — tools, resources, resource templates, prompts —
//! written by workers to the `mcpq_catalog` KV bucket (key = server name) and watched by
//! dispatchers, which serve every list from it without an upstream round trip.

use rmcp::model::{Prompt, Resource, ResourceTemplate, ServerCapabilities, Tool};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::JsonObject;

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
    pub tools: Vec<Listed<Tool>>,
    #[serde(default)]
    pub resources: Vec<Listed<Resource>>,
    #[serde(default)]
    pub resource_templates: Vec<Listed<ResourceTemplate>>,
    #[serde(default)]
    pub prompts: Vec<Listed<Prompt>>,
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

/// Whether a tool's input schema names a parameter that clients mirror in an `Mcp-Param-*`
/// header (SEP-2243 `x-mcp-header`, at any depth of `properties`).
pub fn mirrors_params(schema: &JsonObject) -> bool {
    schema
        .get("properties")
        .and_then(|p| p.as_object())
        .is_some_and(|properties| {
            properties
                .values()
                .filter_map(|p| p.as_object())
                .any(|p| p.contains_key("x-mcp-header") || mirrors_params(p))
        })
}

/// One definition (a tool, resource, template or prompt) as the upstream sent it: every field
/// it had, those rmcp's model does not know included (`execution`, extension fields, fields of
/// revisions newer than mcpq), and rmcp's typed view of it for mcpq's own use. It is written
/// and served as the upstream's object; the typed view is read from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed<T> {
    typed: T,
    raw: JsonObject,
}

impl<T: serde::de::DeserializeOwned + Serialize> Listed<T> {
    /// The upstream's object, read as `T` as well; an error when it is not a valid `T`.
    pub fn from_raw(raw: JsonObject) -> Result<Self, serde_json::Error> {
        let value = serde_json::Value::Object(raw);
        let typed = T::deserialize(&value)?;
        let serde_json::Value::Object(raw) = value else {
            unreachable!("built as an object above")
        };
        Ok(Listed { typed, raw })
    }

    /// A definition known only by its typed view (nothing beyond rmcp's model to keep).
    pub fn from_typed(typed: T) -> Self {
        let raw = match serde_json::to_value(&typed) {
            Ok(serde_json::Value::Object(raw)) => raw,
            _ => JsonObject::new(),
        };
        Listed { typed, raw }
    }
}

impl<T> Listed<T> {
    /// The definition exactly as the upstream sent it.
    pub fn raw(&self) -> &JsonObject {
        &self.raw
    }

    /// The upstream's object with one string field replaced (a name or URI renamed for the
    /// aggregated endpoint); every other field as it was.
    pub fn raw_with(&self, field: &str, value: String) -> JsonObject {
        let mut raw = self.raw.clone();
        raw.insert(field.to_string(), serde_json::Value::String(value));
        raw
    }
}

impl<T> std::ops::Deref for Listed<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.typed
    }
}

impl<T> Serialize for Listed<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

impl<'de, T: serde::de::DeserializeOwned + Serialize> Deserialize<'de> for Listed<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = JsonObject::deserialize(deserializer)?;
        Listed::from_raw(raw).map_err(serde::de::Error::custom)
    }
}

impl<T: JsonSchema> JsonSchema for Listed<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_keeps_the_fields_rmcp_does_not_know() {
        let sent = serde_json::json!({
            "name": "echo",
            "inputSchema": {"type": "object"},
            "execution": {"taskSupport": "forbidden"},
            "annotations": {"readOnlyHint": true, "x-vendor": 1},
            "x-extension": [1, 2]
        });
        let listed: Listed<Tool> = serde_json::from_value(sent.clone()).unwrap();
        assert_eq!(listed.name, "echo");
        assert_eq!(
            listed.annotations.as_ref().unwrap().read_only_hint,
            Some(true)
        );
        assert_eq!(serde_json::to_value(&listed).unwrap(), sent);
        let renamed = listed.raw_with("name", "s__echo".into());
        assert_eq!(renamed["name"], "s__echo");
        assert_eq!(renamed["execution"], sent["execution"]);
        assert!(serde_json::from_value::<Listed<Tool>>(serde_json::json!({"name": 3})).is_err());
    }
}
