//! What an endpoint lists: the catalog entries it serves, renamed for the aggregated endpoint
//! (see `names`), and the capabilities it declares for them.

use mcpq_schemas::{CatalogEntry, JsonObject, Listed};
use rmcp::model::{Prompt, Resource, ResourceTemplate, ServerCapabilities, Tool};

use super::{Gateway, as_written::List, names};
use crate::auth::Caller;

impl Gateway {
    /// The catalog entries this endpoint serves.
    pub(super) fn entries(&self) -> Vec<(String, CatalogEntry)> {
        match &self.scope {
            Some(server) => self
                .shared
                .catalog
                .server(server)
                .map(|entry| (server.clone(), entry))
                .into_iter()
                .collect(),
            None => self.shared.entries().into_iter().collect(),
        }
    }

    /// Every entry's definitions the caller may use (by `name`), with their server.
    fn visible<T: Clone>(
        &self,
        caller: &Caller,
        items: impl Fn(&CatalogEntry) -> &[Listed<T>],
        name: impl Fn(&T) -> &str,
    ) -> Vec<(String, Listed<T>)> {
        self.entries()
            .into_iter()
            .filter(|(server, _)| caller.may_use_server(server))
            .flat_map(|(server, entry)| {
                items(&entry)
                    .iter()
                    .filter(|item| caller.may(&server, name(item)))
                    .map(|item| (server.clone(), item.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The visible definitions in rmcp's model, renamed by `rename` on the aggregated endpoint.
    fn typed<T: Clone>(
        &self,
        caller: &Caller,
        items: impl Fn(&CatalogEntry) -> &[Listed<T>],
        name: impl Fn(&T) -> &str,
        rename: impl Fn(&str, &mut T),
    ) -> Vec<T> {
        let aggregated = self.scope.is_none();
        self.visible(caller, items, name)
            .into_iter()
            .map(|(server, item)| {
                let mut item = T::clone(&item);
                if aggregated {
                    rename(&server, &mut item);
                }
                item
            })
            .collect()
    }

    /// The visible definitions as their upstreams wrote them: on the aggregated endpoint the
    /// name (or URI) field joined with the server's name, every other field as it was.
    fn raw<T: Clone>(
        &self,
        caller: &Caller,
        items: impl Fn(&CatalogEntry) -> &[Listed<T>],
        name: impl Fn(&T) -> &str,
        field: &str,
        join: impl Fn(&str, &str) -> String,
    ) -> Vec<JsonObject> {
        let aggregated = self.scope.is_none();
        self.visible(caller, items, &name)
            .into_iter()
            .map(|(server, item)| {
                if aggregated {
                    item.raw_with(field, join(&server, name(&item)))
                } else {
                    item.raw().clone()
                }
            })
            .collect()
    }

    pub(super) fn tools(&self, caller: &Caller) -> Vec<Tool> {
        self.typed(
            caller,
            |e| &e.tools,
            |t| t.name.as_ref(),
            |server, tool: &mut Tool| tool.name = names::join_name(server, &tool.name).into(),
        )
    }

    pub(super) fn resources(&self, caller: &Caller) -> Vec<Resource> {
        self.typed(
            caller,
            |e| &e.resources,
            |r| r.uri.as_str(),
            |server, r: &mut Resource| r.uri = names::join_uri(server, &r.uri),
        )
    }

    pub(super) fn resource_templates(&self, caller: &Caller) -> Vec<ResourceTemplate> {
        self.typed(
            caller,
            |e| &e.resource_templates,
            |t| t.uri_template.as_str(),
            |server, t: &mut ResourceTemplate| {
                t.uri_template = names::join_uri(server, &t.uri_template);
            },
        )
    }

    pub(super) fn prompts(&self, caller: &Caller) -> Vec<Prompt> {
        self.typed(
            caller,
            |e| &e.prompts,
            |p| p.name.as_str(),
            |server, p: &mut Prompt| p.name = names::join_name(server, &p.name),
        )
    }

    /// One list as the caller sees it here, each definition as its upstream wrote it.
    pub(crate) fn listed(&self, caller: &Caller, list: List) -> Vec<JsonObject> {
        match list {
            List::Tools => self.raw(
                caller,
                |e| &e.tools,
                |t| t.name.as_ref(),
                "name",
                names::join_name,
            ),
            List::Resources => self.raw(
                caller,
                |e| &e.resources,
                |r| r.uri.as_str(),
                "uri",
                names::join_uri,
            ),
            List::Templates => self.raw(
                caller,
                |e| &e.resource_templates,
                |t| t.uri_template.as_str(),
                "uriTemplate",
                names::join_uri,
            ),
            List::Prompts => self.raw(
                caller,
                |e| &e.prompts,
                |p| p.name.as_str(),
                "name",
                names::join_name,
            ),
        }
    }

    /// What this endpoint can do: what the upstreams behind it declared (tools, resources and
    /// their subscriptions, prompts, completions, logging), each list said to change (the
    /// catalog does), and mcpq's own tasks; tools alone before any catalog is published.
    /// Worked out once per catalog version: rmcp asks on every stateless request.
    pub(super) fn capabilities(&self) -> ServerCapabilities {
        let version = self.shared.catalog.version();
        let mut cache = crate::lock(&self.shared.capabilities);
        if let Some((seen, caps)) = cache.get(&self.scope)
            && *seen == version
        {
            return caps.clone();
        }
        let caps = self.work_out_capabilities();
        cache.insert(self.scope.clone(), (version, caps.clone()));
        caps
    }

    fn work_out_capabilities(&self) -> ServerCapabilities {
        let entries = self.entries();
        let any = |has: fn(&ServerCapabilities) -> bool| {
            entries.iter().any(|(_, e)| has(&e.capabilities))
        };
        let mut caps = serde_json::json!({});
        // Before any catalog is published, what the endpoint is for.
        if entries.is_empty() || any(|c| c.tools.is_some()) {
            caps["tools"] = serde_json::json!({"listChanged": true});
        }
        if any(|c| c.resources.is_some()) {
            let subscribe = any(|c| c.resources.as_ref().and_then(|r| r.subscribe) == Some(true));
            caps["resources"] = serde_json::json!({"listChanged": true, "subscribe": subscribe});
        }
        if any(|c| c.prompts.is_some()) {
            caps["prompts"] = serde_json::json!({"listChanged": true});
        }
        if any(|c| c.completions.is_some()) {
            caps["completions"] = serde_json::json!({});
        }
        if any(|c| c.logging.is_some()) {
            caps["logging"] = serde_json::json!({});
        }
        let mut caps: ServerCapabilities = serde_json::from_value(caps).unwrap_or_default();
        caps.extensions = ServerCapabilities::builder()
            .enable_tasks()
            .build()
            .extensions;
        caps
    }
}
