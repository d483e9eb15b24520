//! The `auth:` section: who may call the dispatcher (API keys by their SHA-256, JWTs from an
//! OAuth 2.1 authorization server) and what each caller may call (`server/name` globs), with
//! per-caller limits. Raw as written, then validated; the access decision is a pure function.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{ConfigError, values::DurationText};
use crate::names::is_valid_server_name;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthSection {
    /// API keys, each stored as the SHA-256 of the key (`mcpq auth new-key NAME` makes one).
    #[serde(default)]
    pub api_keys: Vec<ApiKeySection>,
    /// Bearer JWTs from an OAuth 2.1 authorization server (mcpq is the MCP resource server).
    #[serde(default)]
    pub jwt: Option<JwtSection>,
    /// The URL clients reach this dispatcher at, e.g. https://mcpq.example.com (default: from
    /// the request's Host). Names the resource in the OAuth protected-resource metadata.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Show API-key principals by name in metric labels (`mcpq_quota_used`); default false:
    /// labels say only `key` or `jwt`, and never name who called.
    #[serde(default)]
    pub metrics_by_principal: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiKeySection {
    /// Who this key is: jobs it submits belong to this principal.
    pub principal: String,
    /// SHA-256 of the key, 64 hex digits. The key itself is never in the file.
    pub sha256: String,
    /// What the key may call: `server/name` globs, e.g. `github/*` or `*/read_*`.
    pub allow: Vec<String>,
    /// What it may not call even if allowed (deny wins).
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub limits: Option<LimitsSection>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtSection {
    /// The authorization server's issuer; tokens must carry exactly this `iss`.
    pub issuer: String,
    /// This server's names as a resource (RFC 8707); a token's `aud` must contain one.
    pub audiences: Vec<String>,
    /// Where the issuer's JSON Web Key Set is served.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A JSON Web Key Set file (instead of `jwksUrl`).
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// Scopes every token must have (else 403 insufficient_scope).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf` (default 30s).
    #[serde(default)]
    pub leeway: Option<DurationText>,
    /// The claim that names the principal (default `sub`).
    #[serde(default)]
    pub principal_claim: Option<String>,
    /// Accept only access tokens typed `at+jwt` (RFC 9068 `typ` header), so that an ID token
    /// or another JWT the issuer signs cannot pass for one (default false: any `typ`).
    #[serde(default)]
    pub require_access_token_type: bool,
    /// What a token may call, by its claims: every rule whose claim matches adds its lists.
    #[serde(default)]
    pub rules: Vec<JwtRuleSection>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRuleSection {
    /// The claim to look at: `sub`, `groups`, `scope`, ... (a string, a space-separated
    /// `scope`, or an array of strings).
    pub claim: String,
    /// The value the claim must equal or contain; `*` matches any value.
    pub value: String,
    /// What a token this rule matches may call (`server/name` globs), added to what other
    /// matching rules allow.
    pub allow: Vec<String>,
    /// What it may not call; a deny of any matching rule wins over every allow.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Limits for tokens this rule matches (the first matching rule with limits sets them).
    #[serde(default)]
    pub limits: Option<LimitsSection>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsSection {
    /// Calls this principal may submit per minute, across all dispatcher replicas.
    #[serde(default)]
    pub calls_per_minute: Option<u32>,
    /// Calls of this principal a dispatcher may hold open at once, across all replicas.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
}

/// Validated `auth:`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub api_keys: Vec<ApiKey>,
    pub jwt: Option<JwtConfig>,
    pub public_url: Option<String>,
    /// Whether metric labels may name API-key principals.
    pub metrics_by_principal: bool,
}

/// One API key: its principal, the SHA-256 of the key, what it may call.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub principal: String,
    pub sha256: [u8; 32],
    pub access: Access,
    pub limits: Limits,
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    pub required_scopes: Vec<String>,
    pub leeway: Duration,
    pub principal_claim: String,
    pub rules: Vec<JwtRule>,
    /// Only `typ: at+jwt` tokens pass.
    pub require_access_token_type: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JwksSource {
    Url(String),
    File(String),
}

#[derive(Debug, Clone)]
pub struct JwtRule {
    pub claim: String,
    pub value: String,
    pub access: Access,
    pub limits: Limits,
}

/// Per-principal limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub calls_per_minute: Option<u32>,
    pub max_in_flight: Option<u32>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.calls_per_minute.is_none() && self.max_in_flight.is_none()
    }

    /// These limits where set, else `other`'s.
    pub fn or(self, other: Limits) -> Limits {
        Limits {
            calls_per_minute: self.calls_per_minute.or(other.calls_per_minute),
            max_in_flight: self.max_in_flight.or(other.max_in_flight),
        }
    }
}

/// What a caller may call: allowed unless no `allow` pattern matches or a `deny` one does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub allow: Vec<Pattern>,
    pub deny: Vec<Pattern>,
}

impl Access {
    /// Everything (a dispatcher without `auth:`).
    pub fn everything() -> Access {
        Access {
            allow: vec![Pattern::parse("*/*").expect("a valid pattern")],
            deny: Vec::new(),
        }
    }

    /// Whether `name` (a tool, a prompt, or a resource URI) of `server` may be used. A URI is
    /// matched as [`normalize_uri`] reads it — dot segments resolved, encoded unreserved
    /// characters decoded — so `file:///srv/pub/%2e%2e/etc/shadow` is `file:///etc/shadow`;
    /// one that cannot be read safely (an encoded `/`, `\` or NUL in its path) is permitted
    /// only by a pattern whose name part is `*`. A deny pattern matching the URI as sent or as
    /// read denies it.
    pub fn permits(&self, server: &str, name: &str) -> bool {
        let denied = |n: &str| self.deny.iter().any(|p| p.matches(server, n));
        if !name.contains("://") {
            return self.allow.iter().any(|p| p.matches(server, name)) && !denied(name);
        }
        match normalize_uri(name) {
            Some(read) => {
                self.allow.iter().any(|p| p.matches(server, &read))
                    && !denied(&read)
                    && !denied(name)
            }
            None => {
                self.allow
                    .iter()
                    .any(|p| p.name == "*" && glob(&p.server, server))
                    && !denied(name)
            }
        }
    }

    /// Whether anything of `server` could be permitted (an endpoint the caller has no use for
    /// shows nothing).
    pub fn touches(&self, server: &str) -> bool {
        self.allow.iter().any(|p| glob(&p.server, server))
    }

    /// This access and `other`'s together (JWT rules add up).
    pub fn merge(&mut self, other: &Access) {
        self.allow.extend(other.allow.iter().cloned());
        self.deny.extend(other.deny.iter().cloned());
    }
}

/// `server/name`, each side a glob where `*` matches any run of characters. The first `/`
/// splits it: server names have none, tool names and URIs may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    server: String,
    name: String,
}

/// Why a text is not a [`Pattern`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error(
        "{0:?} is not a server/name pattern (like \"github/*\", \"*/read_*\" or \"jira/create_issue\")"
    )]
    NoSlash(String),
    #[error(
        "{0:?}: the server part must be a server name or a glob of one, and the name part not empty (like \"github/*\")"
    )]
    Parts(String),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let Some((server, name)) = text.split_once('/') else {
            return Err(PatternError::NoSlash(text.to_string()));
        };
        let server_ok = server == "*"
            || is_valid_server_name(&server.replace('*', "x"))
            || (!server.is_empty() && server.chars().all(|c| c == '*'));
        if !server_ok || name.is_empty() {
            return Err(PatternError::Parts(text.to_string()));
        }
        Ok(Pattern {
            server: server.to_string(),
            name: name.to_string(),
        })
    }

    pub fn matches(&self, server: &str, name: &str) -> bool {
        glob(&self.server, server) && glob(&self.name, name)
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.server, self.name)
    }
}

/// A resource URI as access rules read it: `scheme://authority` kept, the path's encoded
/// unreserved characters (`%2e` and the like) decoded and its dot segments (`.`, `..`)
/// resolved as RFC 3986 says, the query and fragment kept. `None` when its path hides a
/// separator or a NUL in percent-encoding (`%2f`, `%5c`, `%00`), which an upstream might read
/// as one.
pub fn normalize_uri(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let (authority, after) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    let tail_at = after.find(['?', '#']).unwrap_or(after.len());
    let (path, tail) = after.split_at(tail_at);
    let mut decoded = String::with_capacity(path.len());
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            let byte = u8::from_str_radix(hex, 16).ok()?;
            if matches!(byte, b'/' | b'\\' | 0) {
                return None;
            }
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                decoded.push(byte as char);
            } else {
                decoded.push_str(&path[i..i + 3]);
            }
            i += 3;
        } else {
            let c = path[i..].chars().next()?;
            decoded.push(c);
            i += c.len_utf8();
        }
    }
    let mut segments: Vec<&str> = Vec::new();
    let absolute = decoded.starts_with('/');
    let parts: Vec<&str> = decoded.split('/').collect();
    let last = parts.len().saturating_sub(1);
    for (n, segment) in parts.iter().enumerate() {
        match *segment {
            "." => {
                if n == last {
                    segments.push("");
                }
            }
            ".." => {
                if segments.len() > usize::from(absolute) {
                    segments.pop();
                }
                if n == last {
                    segments.push("");
                }
            }
            other => segments.push(other),
        }
    }
    let mut path = segments.join("/");
    if absolute && !path.starts_with('/') {
        path.insert(0, '/');
    }
    Some(format!("{scheme}://{authority}{path}{tail}"))
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (none included).
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const MAX_LEEWAY: Duration = Duration::from_secs(300);

pub(super) fn validate(section: AuthSection, errors: &mut Vec<ConfigError>) -> AuthConfig {
    let mut err = |path: String, message: String| errors.push(ConfigError::field(path, message));
    let mut api_keys = Vec::new();
    let mut principals = std::collections::BTreeMap::new();
    for (i, key) in section.api_keys.into_iter().enumerate() {
        let path = format!("auth.apiKeys[{i}]");
        if key.principal.trim().is_empty() || key.principal.len() > 128 {
            err(
                format!("{path}.principal"),
                format!("{:?}: name the caller (1-128 characters)", key.principal),
            );
        }
        if let Some(first) = principals.insert(key.principal.clone(), i) {
            err(
                format!("{path}.principal"),
                format!(
                    "duplicate principal {:?} (also auth.apiKeys[{first}]; one key per principal, rotate by replacing sha256)",
                    key.principal
                ),
            );
        }
        let sha256 = match parse_sha256(&key.sha256) {
            Some(digest) => digest,
            None => {
                err(
                    format!("{path}.sha256"),
                    format!(
                        "{:?} is not a SHA-256 in hex (64 hex digits; `mcpq auth new-key {}` prints a key and its line)",
                        key.sha256, key.principal
                    ),
                );
                [0; 32]
            }
        };
        let access = access(&path, &key.allow, &key.deny, &mut err);
        let limits = limits(&path, key.limits, &mut err);
        api_keys.push(ApiKey {
            principal: key.principal,
            sha256,
            access,
            limits,
        });
    }
    let jwt = section.jwt.map(|jwt| {
        let path = "auth.jwt";
        if jwt.issuer.trim().is_empty() {
            err(format!("{path}.issuer"), "empty: the issuer's URL".into());
        }
        if jwt.audiences.is_empty() || jwt.audiences.iter().any(|a| a.trim().is_empty()) {
            err(
                format!("{path}.audiences"),
                "list at least one: the resource URI tokens must name, e.g. https://mcpq.example.com/mcp".into(),
            );
        }
        let jwks = match (jwt.jwks_url, jwt.jwks_file) {
            (Some(url), None) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    err(
                        format!("{path}.jwksUrl"),
                        format!("{url:?} is not an http(s) URL"),
                    );
                }
                JwksSource::Url(url)
            }
            (None, Some(file)) => JwksSource::File(file),
            (Some(_), Some(_)) => {
                err(
                    format!("{path}.jwksFile"),
                    "set jwksUrl or jwksFile, not both".into(),
                );
                JwksSource::File(String::new())
            }
            (None, None) => {
                err(
                    format!("{path}.jwksUrl"),
                    "missing: where the issuer's keys are (jwksUrl, or jwksFile)".into(),
                );
                JwksSource::File(String::new())
            }
        };
        let leeway = jwt.leeway.map_or(DEFAULT_LEEWAY, |d| d.0);
        if leeway > MAX_LEEWAY {
            err(
                format!("{path}.leeway"),
                format!("{leeway:?} is too long (at most 5m)"),
            );
        }
        let rules = jwt
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| {
                let path = format!("{path}.rules[{i}]");
                if rule.claim.trim().is_empty() {
                    err(format!("{path}.claim"), "empty: name a claim, like groups".into());
                }
                JwtRule {
                    access: access(&path, &rule.allow, &rule.deny, &mut err),
                    limits: limits(&path, rule.limits, &mut err),
                    claim: rule.claim,
                    value: rule.value,
                }
            })
            .collect();
        JwtConfig {
            issuer: jwt.issuer,
            audiences: jwt.audiences,
            jwks,
            required_scopes: jwt.required_scopes,
            leeway,
            principal_claim: jwt.principal_claim.unwrap_or_else(|| "sub".into()),
            rules,
            require_access_token_type: jwt.require_access_token_type,
        }
    });
    if api_keys.is_empty() && jwt.is_none() {
        err(
            "auth".into(),
            "names no way in: add apiKeys or jwt (or remove auth: to serve loopback only)".into(),
        );
    }
    if let Some(url) = &section.public_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        err(
            "auth.publicUrl".into(),
            format!("{url:?} is not an http(s) URL (like https://mcpq.example.com)"),
        );
    }
    AuthConfig {
        api_keys,
        jwt,
        public_url: section
            .public_url
            .map(|u| u.trim_end_matches('/').to_string()),
        metrics_by_principal: section.metrics_by_principal,
    }
}

fn access(
    path: &str,
    allow: &[String],
    deny: &[String],
    err: &mut impl FnMut(String, String),
) -> Access {
    let mut patterns = |field: &str, list: &[String]| {
        list.iter()
            .enumerate()
            .filter_map(|(i, text)| match Pattern::parse(text) {
                Ok(p) => Some(p),
                Err(message) => {
                    err(format!("{path}.{field}[{i}]"), message.to_string());
                    None
                }
            })
            .collect()
    };
    Access {
        allow: patterns("allow", allow),
        deny: patterns("deny", deny),
    }
}

fn limits(
    path: &str,
    section: Option<LimitsSection>,
    err: &mut impl FnMut(String, String),
) -> Limits {
    let Some(section) = section else {
        return Limits::default();
    };
    for (field, value) in [
        ("callsPerMinute", section.calls_per_minute),
        ("maxInFlight", section.max_in_flight),
    ] {
        if value == Some(0) {
            err(
                format!("{path}.limits.{field}"),
                "0 (at least 1; remove it for no limit)".into(),
            );
        }
    }
    Limits {
        calls_per_minute: section.calls_per_minute,
        max_in_flight: section.max_in_flight,
    }
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn access(allow: &[&str], deny: &[&str]) -> Access {
        let parse = |l: &[&str]| l.iter().map(|p| Pattern::parse(p).unwrap()).collect();
        Access {
            allow: parse(allow),
            deny: parse(deny),
        }
    }

    #[test]
    fn uris_are_read_before_they_are_matched() {
        let read = |u: &str| normalize_uri(u);
        assert_eq!(
            read("file:///srv/pub/../../etc/shadow").as_deref(),
            Some("file:///etc/shadow")
        );
        assert_eq!(
            read("file:///srv/pub/%2e%2e/%2E%2E/etc/shadow").as_deref(),
            Some("file:///etc/shadow")
        );
        assert_eq!(
            read("file:///srv/pub/./a/./b").as_deref(),
            Some("file:///srv/pub/a/b")
        );
        assert_eq!(read("file:///../../x").as_deref(), Some("file:///x"));
        assert_eq!(
            read("https://h/a/b/../c?q=../x#f").as_deref(),
            Some("https://h/a/c?q=../x#f")
        );
        assert_eq!(read("file:///srv/pub/..%2f..%2fetc/shadow"), None);
        assert_eq!(read("file:///srv/pub/x%5c..%5cy"), None);
        assert_eq!(read("file:///srv/pub/x%00"), None);
        assert_eq!(read("file:///srv/pub/%zz"), None);
        assert_eq!(
            read("file:///srv/pub/a%20b").as_deref(),
            Some("file:///srv/pub/a%20b")
        );

        let access = Access {
            allow: vec![Pattern::parse("files/file:///srv/pub/*").unwrap()],
            deny: vec![Pattern::parse("files/*secret*").unwrap()],
        };
        assert!(access.permits("files", "file:///srv/pub/readme.txt"));
        assert!(access.permits("files", "file:///srv/pub/sub/../readme.txt"));
        for walked in [
            "file:///srv/pub/../../etc/shadow",
            "file:///srv/pub/%2e%2e/%2e%2e/etc/shadow",
            "file:///srv/pub/..%2f..%2fetc%2fshadow",
            "file:///srv/pub/%73ecret.txt",
        ] {
            assert!(!access.permits("files", walked), "{walked}");
        }
        let everything = Access::everything();
        assert!(everything.permits("files", "file:///srv/pub/..%2f..%2fetc%2fshadow"));
    }

    #[test]
    fn globs_match_any_run_of_characters() {
        assert!(glob("*", ""));
        assert!(glob("read_*", "read_file"));
        assert!(!glob("read_*", "write_file"));
        assert!(glob("*_issue", "create_issue"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXcYYb"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(glob("file://*", "file:///etc/x"));
    }

    #[test]
    fn deny_wins_and_nothing_is_allowed_unless_listed() {
        let a = access(&["github/*", "*/read_*"], &["github/delete_*"]);
        assert!(a.permits("github", "create_issue"));
        assert!(!a.permits("github", "delete_repo"));
        assert!(a.permits("files", "read_file"));
        assert!(!a.permits("files", "write_file"));
        assert!(a.touches("files") && a.touches("github"));
        assert!(!access(&[], &[]).permits("github", "x"));
        assert!(Access::everything().permits("any", "thing/with/slashes"));
        let only = access(&["jira/*"], &[]);
        assert!(!only.touches("github"));
    }

    #[test]
    fn patterns_need_a_server_and_a_name() {
        for bad in ["github", "/x", "github/", "bad name/x", "a__b/x"] {
            assert!(Pattern::parse(bad).is_err(), "{bad} should be refused");
        }
        for good in ["*/*", "git*/x", "github/a/b", "**/x"] {
            assert!(Pattern::parse(good).is_ok(), "{good} should parse");
        }
    }

    #[test]
    fn sha256_is_64_hex_digits() {
        assert!(parse_sha256(&"ab".repeat(32)).is_some());
        assert!(parse_sha256(&"ab".repeat(31)).is_none());
        assert!(parse_sha256(&"zz".repeat(32)).is_none());
    }
}
