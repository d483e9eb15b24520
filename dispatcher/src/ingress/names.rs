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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Server names as the config allows them (see `is_valid_server_name`).
    fn server() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?"
    }

    proptest! {
        #[test]
        fn any_text_splits_without_panicking(name in any::<String>()) {
            if let Some((server, rest)) = split_name(&name) {
                prop_assert!(!server.is_empty() && !rest.is_empty());
                prop_assert_eq!(join_name(server, rest), name.clone());
            }
            let _ = split_uri(&name);
        }

        #[test]
        fn joined_names_and_uris_split_back(
            server in server(),
            name in (any::<char>(), any::<String>()).prop_map(|(c, s)| format!("{c}{s}")),
        ) {
            let joined = join_name(&server, &name);
            prop_assert_eq!(split_name(&joined), Some((server.as_str(), name.as_str())));
            let uri = join_uri(&server, &name);
            prop_assert_eq!(split_uri(&uri), Some((server.as_str(), name.as_str())));
        }
    }
}
