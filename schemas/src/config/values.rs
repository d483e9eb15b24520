//! Values written as text that every section of the config file reads: durations, byte sizes,
//! HTTP URLs. A leaf: the sections (`raw`, `auth`, `observe`) and `validate` use it, it uses
//! none of them.

use std::{borrow::Cow, fmt};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, de};

/// A duration written as text: "250ms", "30s", "5m", "1h 30m".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DurationText(pub std::time::Duration);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration with a unit, like \"250ms\" or \"30s\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DurationText, E> {
                humantime::parse_duration(s).map(DurationText).map_err(|e| {
                    E::custom(format!(
                        "invalid duration {s:?}: {e} (write a number and a unit, like \"250ms\" or \"30s\")"
                    ))
                })
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<DurationText, E> {
                Err(E::custom(format!(
                    "invalid duration {n}: a unit is needed (write \"{n}s\" or \"{n}ms\")"
                )))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<DurationText, E> {
                self.visit_u64(n.unsigned_abs())
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<DurationText, E> {
                Err(E::custom(format!(
                    "invalid duration {n}: a unit is needed (write \"{n}s\")"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for DurationText {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration with a unit: 250ms, 30s, 5m, 1h 30m",
            "pattern": "^\\s*\\d+(\\.\\d+)?\\s*[a-zµ]+(\\s*\\d+(\\.\\d+)?\\s*[a-zµ]+)*\\s*$"
        })
    }
}

/// A size in bytes: a number of bytes, or a number and a unit (`"32MiB"`, `"512 KB"`).
#[derive(Debug, Clone, Copy)]
pub struct ByteSizeText(pub u64);

impl<'de> Deserialize<'de> for ByteSizeText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSizeText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size: bytes, or a number and a unit like \"32MiB\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteSizeText, E> {
                s.trim()
                    .parse::<bytesize::ByteSize>()
                    .map(|b| ByteSizeText(b.as_u64()))
                    .map_err(|e| {
                        E::custom(format!(
                            "invalid size {s:?}: {e} (write bytes, or a number and a unit like \"32MiB\" or \"500KB\")"
                        ))
                    })
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ByteSizeText, E> {
                Ok(ByteSizeText(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ByteSizeText, E> {
                u64::try_from(n)
                    .map(ByteSizeText)
                    .map_err(|_| E::custom(format!("invalid size {n}: negative")))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for ByteSizeText {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: bytes, or a number and a unit (32MiB, 500KB)",
            "oneOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^\\s*\\d+(\\.\\d+)?\\s*[A-Za-z]*\\s*$"}
            ]
        })
    }
}

/// Why a value is not an HTTP URL mcpq can call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} is not a URL (expected http:// or https://)")]
    NotUrl(String),
    #[error("{0:?} is not a URL (expected http or https)")]
    Scheme(String),
    #[error("{0:?} has no host (expected like https://mcp.example.com/mcp)")]
    NoHost(String),
}

pub(crate) fn check_http_url(url: &str) -> Result<(), UrlError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| UrlError::NotUrl(url.to_string()))?;
    if scheme != "http" && scheme != "https" {
        return Err(UrlError::Scheme(url.to_string()));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(UrlError::NoHost(url.to_string()));
    }
    Ok(())
}
