//! How the aggregated endpoint `/mcp` names what many servers offer, so that nothing collides
//! and every name leads back to its server and to the upstream's own name, unchanged.
//!
//! - Tools and prompts: `<server>__<name>`. Server names never contain `__` and never start or
//!   end with `_`, so the first `__` always ends the server name, whatever the rest holds.
//! - Resource URIs and URI templates: `mcpq://<server>/<the upstream's URI as it is>`. Server
//!   names never contain `/`, so the first `/` after `mcpq://` ends the server name, and the rest
//!   is the upstream's URI byte for byte (its own scheme, `?`, `#` and all).
//!
//! `/servers/<name>/mcp` uses the upstream's names as they are.

/// Separates server and name in aggregated tool and prompt names.
pub const NAME_SEPARATOR: &str = "__";
/// Starts every aggregated resource URI.
pub const URI_PREFIX: &str = "mcpq://";

/// An aggregated tool or prompt name.
pub fn join_name(server: &str, name: &str) -> String {
    format!("{server}{NAME_SEPARATOR}{name}")
}

/// (server, upstream name) of an aggregated tool or prompt name.
pub fn split_name(name: &str) -> Option<(&str, &str)> {
    name.split_once(NAME_SEPARATOR)
        .filter(|(server, rest)| !server.is_empty() && !rest.is_empty())
}

/// An aggregated resource URI (or URI template).
pub fn join_uri(server: &str, uri: &str) -> String {
    format!("{URI_PREFIX}{server}/{uri}")
}

/// (server, upstream URI) of an aggregated resource URI (or URI template).
pub fn split_uri(uri: &str) -> Option<(&str, &str)> {
    uri.strip_prefix(URI_PREFIX)?
        .split_once('/')
        .filter(|(server, rest)| !server.is_empty() && !rest.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_at_the_first_separator() {
        assert_eq!(
            split_name("github__search__v2"),
            Some(("github", "search__v2"))
        );
        assert_eq!(split_name(&join_name("a-b", "x.y")), Some(("a-b", "x.y")));
        for bad in ["plain", "__x", "x__"] {
            assert_eq!(split_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn uris_round_trip_byte_for_byte() {
        for uri in [
            "test://static/resource/1",
            "file:///home/me/notes.md",
            "https://example.com/a?b=c&d=e#frag",
            "db://x/{table}/rows{?limit}",
            "weird:no-slashes",
        ] {
            let joined = join_uri("srv_1", uri);
            assert!(joined.starts_with("mcpq://srv_1/"), "{joined}");
            assert_eq!(split_uri(&joined), Some(("srv_1", uri)));
        }
        for bad in [
            "test://static/resource/1",
            "mcpq://",
            "mcpq://srv",
            "mcpq:///x",
            "mcpq://srv/",
        ] {
            assert_eq!(split_uri(bad), None, "{bad}");
        }
    }
}
