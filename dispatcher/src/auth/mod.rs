//! Who is calling and what they may call. [`Authenticator`] turns an `Authorization: Bearer`
//! header into a [`Caller`] — an API key (compared by SHA-256, in constant time) or a JWT from
//! the configured issuer ([`jwt`]) — or a [`Denied`] saying why not; [`guard`] is the axum
//! layer in front of every route; [`quota`] keeps per-principal limits across replicas.
//!
//! The caller's token is never forwarded: it stops here. Upstream credentials are the
//! per-server ones in the config.

pub mod guard;
pub mod jwt;
pub mod quota;

use std::sync::Arc;

use base64::Engine;
use mcpq_schemas::config::{Access, ApiKey, AuthConfig, Limits};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The authenticated (or, without `auth:`, anonymous) caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    principal: Option<String>,
    access: Arc<Access>,
    limits: Limits,
}

impl Caller {
    /// The caller of a dispatcher without `auth:`: may call everything, owns everything.
    pub fn anonymous() -> Caller {
        Caller {
            principal: None,
            access: Arc::new(Access::everything()),
            limits: Limits::default(),
        }
    }

    /// A caller that may use nothing (a request that did not pass the HTTP layer).
    pub fn nobody() -> Caller {
        Caller {
            principal: Some(String::new()),
            access: Arc::new(Access::default()),
            limits: Limits::default(),
        }
    }

    pub fn new(principal: String, access: Access, limits: Limits) -> Caller {
        Caller {
            principal: Some(principal),
            access: Arc::new(access),
            limits,
        }
    }

    /// Who this is; `None` for the anonymous caller.
    pub fn principal(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the caller may use `name` (a tool, a prompt, a resource URI) of `server`.
    pub fn may(&self, server: &str, name: &str) -> bool {
        self.access.permits(server, name)
    }

    /// Whether anything of `server` may be used.
    pub fn may_use_server(&self, server: &str) -> bool {
        self.access.touches(server)
    }

    /// Whether a job, task or batch submitted by `owner` is this caller's to read or cancel.
    /// The anonymous caller (no `auth:`) owns everything; an authenticated one only its own.
    pub fn owns(&self, owner: Option<&str>) -> bool {
        self.principal.is_none() || owner == self.principal.as_deref()
    }
}

/// The principal an API key names, as mcpq keeps it: `key:<name>`. Principals are namespaced
/// by where they come from, so that a JWT whose subject is `alice` is never the API key
/// `alice` (and owns none of its jobs).
pub fn key_principal(name: &str) -> String {
    format!("key:{name}")
}

/// The principal a JWT names: `jwt:<subject>`.
pub fn jwt_principal(subject: &str) -> String {
    format!("jwt:{subject}")
}

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization` header (401, no `error=`).
    Missing,
    /// Credentials that are not valid: malformed, unknown key, bad or expired token (401,
    /// `error="invalid_token"`).
    Invalid(String),
    /// A valid token without a required scope (403, `error="insufficient_scope"`).
    InsufficientScope(String),
}

impl Denied {
    pub fn message(&self) -> String {
        match self {
            Denied::Missing => {
                "no credentials: send Authorization: Bearer <API key or token>".into()
            }
            Denied::Invalid(reason) => format!("credentials refused: {reason}"),
            Denied::InsufficientScope(scope) => {
                format!("the token lacks the scope {scope:?} this server requires")
            }
        }
    }
}

/// Checks credentials against the `auth:` section.
pub struct Authenticator {
    keys: Vec<ApiKey>,
    jwt: Option<jwt::Verifier>,
    config: AuthConfig,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Result<Authenticator, jwt::JwksError> {
        Ok(Authenticator {
            keys: config.api_keys.clone(),
            jwt: config.jwt.clone().map(jwt::Verifier::new).transpose()?,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The caller behind an `Authorization` header value.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, Denied> {
        let Some(value) = authorization else {
            return Err(Denied::Missing);
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Denied::Invalid("the Authorization header is not \"Bearer <credentials>\"".into())
            })?;
        if let Some(key) = self.api_key(token) {
            return Ok(Caller::new(
                key_principal(&key.principal),
                key.access.clone(),
                key.limits,
            ));
        }
        match &self.jwt {
            Some(verifier) if token.split('.').count() == 3 => verifier.verify(token).await,
            _ => Err(Denied::Invalid("unknown API key".into())),
        }
    }

    /// The key whose SHA-256 is `token`'s. Every key is compared, each in constant time.
    fn api_key(&self, token: &str) -> Option<&ApiKey> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.sha256.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found
    }
}

/// A fresh API key for `principal` (256 random bits, `mcpq_` + base64url) and the SHA-256
/// that goes in the config.
pub fn new_key() -> Result<(String, String), getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let key = format!(
        "mcpq_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    Ok((key.clone(), sha256_hex(&key)))
}

/// SHA-256 of `text` in lower-case hex.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use mcpq_schemas::config::Config;

    use super::*;

    fn authenticator(key: &str) -> Authenticator {
        let config = Config::from_yaml(&format!(
            r#"
version: "1.0"
auth:
  apiKeys:
    - principal: ci
      sha256: "{}"
      allow: ["github/*"]
      deny: ["github/delete_*"]
servers: [{{name: github, type: http, endpoint: "http://127.0.0.1:1/mcp"}}]
"#,
            sha256_hex(key)
        ))
        .unwrap();
        Authenticator::new(config.auth.as_ref().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn api_keys_are_known_by_their_hash() {
        let (key, hash) = new_key().unwrap();
        assert_eq!(hash, sha256_hex(&key));
        assert!(key.starts_with("mcpq_") && key.len() > 40);
        let auth = authenticator(&key);
        let caller = auth
            .authenticate(Some(&format!("Bearer {key}")))
            .await
            .unwrap();
        assert_eq!(caller.principal(), Some("key:ci"), "namespaced by source");
        assert!(caller.may("github", "create_issue"));
        assert!(!caller.may("github", "delete_repo"));
        assert!(!caller.may("slack", "post"));
        assert!(caller.owns(Some("key:ci")) && !caller.owns(Some("jwt:ci")) && !caller.owns(None));
        assert_eq!(auth.authenticate(None).await.unwrap_err(), Denied::Missing);
        assert!(matches!(
            auth.authenticate(Some("Bearer mcpq_wrong")).await,
            Err(Denied::Invalid(_))
        ));
        assert!(matches!(
            auth.authenticate(Some(&format!("Basic {key}"))).await,
            Err(Denied::Invalid(_))
        ));
        assert!(Caller::anonymous().owns(Some("anyone")));
    }
}
