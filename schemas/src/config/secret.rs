//! Secrets by reference: `${env:NAME}` and `${file:path}` inside config values, resolved when a
//! worker starts, never written back anywhere.

use std::fmt;

/// A config value that may contain references to secrets.
#[derive(Clone, PartialEq)]
pub struct Secret {
    parts: Vec<Part>,
}

#[derive(Clone, PartialEq)]
enum Part {
    Literal(String),
    Env(String),
    File(String),
}

/// A secret that could not be resolved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set (export it, or change the reference)")]
    MissingEnv(String),
    #[error("cannot read secret file {path}: {reason}")]
    File { path: String, reason: String },
}

/// Why a value's `${...}` references cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("unclosed reference in {0:?} (expected ${{env:NAME}} or ${{file:PATH}})")]
    Unclosed(String),
    #[error(
        "{0:?} is not an environment variable name (letters, digits and _, not starting with a digit)"
    )]
    EnvName(String),
    #[error("unknown reference ${{{0}}} (expected ${{env:NAME}} or ${{file:PATH}})")]
    Unknown(String),
}

impl Secret {
    /// Parses a value, checking every `${...}` reference. The error says what is wrong with it.
    pub fn parse(value: &str) -> Result<Secret, ReferenceError> {
        let mut parts = Vec::new();
        let mut rest = value;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| ReferenceError::Unclosed(value.to_string()))?;
            let reference = &after[..end];
            let part = match reference.split_once(':') {
                Some(("env", name)) if is_env_name(name) => Part::Env(name.to_string()),
                Some(("env", name)) => return Err(ReferenceError::EnvName(name.to_string())),
                Some(("file", path)) if !path.is_empty() => Part::File(path.to_string()),
                _ => return Err(ReferenceError::Unknown(reference.to_string())),
            };
            parts.push(part);
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Secret { parts })
    }

    /// A secret read from one environment variable.
    pub fn env(name: &str) -> Secret {
        Secret {
            parts: vec![Part::Env(name.to_string())],
        }
    }

    /// This value with a literal `prefix` in front, e.g. `Bearer `.
    pub fn prefixed(mut self, prefix: &str) -> Secret {
        self.parts.insert(0, Part::Literal(prefix.to_string()));
        self
    }

    /// The value with every reference resolved.
    pub fn resolve(&self) -> Result<String, SecretError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Env(name) => out.push_str(
                    &std::env::var(name).map_err(|_| SecretError::MissingEnv(name.clone()))?,
                ),
                Part::File(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| SecretError::File {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                    out.push_str(text.trim_end_matches(['\n', '\r']));
                }
            }
        }
        Ok(out)
    }

    /// The environment variables this value reads.
    pub fn env_names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Env(name) => Some(name.as_str()),
            _ => None,
        })
    }
}

/// Shown without resolving, so a secret never reaches a log.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(_) => f.write_str("<literal>")?,
                Part::Env(name) => write!(f, "${{env:{name}}}")?,
                Part::File(path) => write!(f, "${{file:{path}}}")?,
            }
        }
        Ok(())
    }
}

pub(crate) fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
