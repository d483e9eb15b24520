//! JWT bearer tokens, as an OAuth 2.1 resource server (MCP authorization, RFC 9068/8707):
//! the signature against the issuer's JSON Web Key Set, `iss`, `aud` naming this server, `exp`
//! and `nbf` with the configured leeway, the required scopes; then the config's `rules` turn
//! the claims into what the caller may call.
//!
//! The key set is read when first needed and again when a token names an unknown `kid` — at
//! most once a minute ([`may_refresh`]), so a flood of made-up `kid`s never floods the issuer.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation, decode, decode_header,
    jwk::{AlgorithmParameters, JwkSet},
};
use mcpq_schemas::config::{Access, JwksSource, JwtConfig, Limits};
use serde_json::Value;
use tokio::sync::Mutex;

use super::{Caller, Denied};

/// The shortest time between two reads of the key set.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// A key set that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("auth.jwt: cannot build an HTTP client for jwksUrl: {0}")]
    Client(#[source] reqwest::Error),
}

/// Checks tokens of one issuer.
pub struct Verifier {
    config: JwtConfig,
    http: reqwest::Client,
    /// The keys known; held only to look up or replace them, never across a read.
    keys: std::sync::Mutex<Keys>,
    /// Held while the key set is read: a caller whose key is unknown waits for the read in
    /// progress, then looks again (one read at a time); a caller whose key is known never
    /// waits.
    reading: Mutex<()>,
    /// The shortest time between two reads ([`REFRESH_INTERVAL`]).
    refresh: Duration,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Key>,
    /// Keys without a `kid`: usable only when the token names none.
    anonymous: Vec<Key>,
    read_at: Option<Instant>,
}

#[derive(Clone)]
struct Key {
    key: DecodingKey,
    /// The algorithm the key is for, if the set says.
    alg: Option<Algorithm>,
    rsa: bool,
}

/// Whether the key set may be read again, last read at `last`, at most once per `every`.
pub fn may_refresh(last: Option<Instant>, now: Instant, every: Duration) -> bool {
    last.is_none_or(|last| now.saturating_duration_since(last) >= every)
}

impl Verifier {
    pub fn new(config: JwtConfig) -> Result<Verifier, JwksError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(JwksError::Client)?;
        Ok(Verifier {
            config,
            http,
            keys: Default::default(),
            reading: Mutex::new(()),
            refresh: REFRESH_INTERVAL,
        })
    }

    /// The caller `token` stands for.
    pub async fn verify(&self, token: &str) -> Result<Caller, Denied> {
        let invalid = |reason: String| Denied::Invalid(reason);
        let header = decode_header(token).map_err(|e| invalid(format!("not a JWT: {e}")))?;
        if self.config.require_access_token_type
            && !header.typ.as_deref().is_some_and(|t| {
                t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
            })
        {
            return Err(invalid(
                "the token is not an access token (typ at+jwt, RFC 9068): send an access token, not an ID token".into(),
            ));
        }
        let key = self.key(header.kid.as_deref()).await?;
        let family_ok = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => false,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => key.rsa,
            _ => !key.rsa,
        };
        if !family_ok || key.alg.is_some_and(|alg| alg != header.alg) {
            return Err(invalid(format!(
                "the token's algorithm {:?} does not fit its key",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&self.config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        let claims = decode::<Value>(token, &key.key, &validation)
            .map_err(|e| invalid(describe(e.kind())))?
            .claims;
        let scopes = scopes(&claims);
        if let Some(missing) = self
            .config
            .required_scopes
            .iter()
            .find(|s| !scopes.contains(&s.as_str()))
        {
            return Err(Denied::InsufficientScope(missing.clone()));
        }
        let principal = claims
            .get(&self.config.principal_claim)
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                invalid(format!(
                    "the token has no {:?} claim to name its principal",
                    self.config.principal_claim
                ))
            })?;
        let (access, limits) = self.grants(&claims);
        Ok(Caller::new(super::jwt_principal(principal), access, limits))
    }

    /// What the matching rules grant: their lists together, the first limits set.
    fn grants(&self, claims: &Value) -> (Access, Limits) {
        let mut access = Access::default();
        let mut limits = Limits::default();
        for rule in &self.config.rules {
            if claim_has(claims.get(&rule.claim), &rule.value) {
                access.merge(&rule.access);
                limits = limits.or(rule.limits);
            }
        }
        (access, limits)
    }

    /// The key named `kid` (or the only key, for a token naming none), reading the set again
    /// when it is unknown and the last read is a minute old.
    async fn key(&self, kid: Option<&str>) -> Result<Key, Denied> {
        if let Some(key) = crate::lock(&self.keys).find(kid) {
            return Ok(key);
        }
        // One read at a time: the set may have changed while this caller waited.
        let _reading = self.reading.lock().await;
        {
            let mut keys = crate::lock(&self.keys);
            if let Some(key) = keys.find(kid) {
                return Ok(key);
            }
            if !may_refresh(keys.read_at, Instant::now(), self.refresh) {
                return Err(unknown_key(kid));
            }
            keys.read_at = Some(Instant::now());
        }
        match self.read().await {
            Ok(set) => {
                let mut keys = crate::lock(&self.keys);
                keys.replace(set);
                if let Some(key) = keys.find(kid) {
                    return Ok(key);
                }
            }
            // The keys read before stay: a failed read takes nothing away.
            Err(reason) => {
                tracing::warn!(%reason, "cannot read the issuer's JSON Web Key Set");
            }
        }
        Err(unknown_key(kid))
    }

    async fn read(&self) -> Result<JwkSet, ReadError> {
        let text = match &self.config.jwks {
            JwksSource::File(path) => {
                std::fs::read_to_string(path).map_err(|source| ReadError::File {
                    path: path.clone(),
                    source,
                })?
            }
            JwksSource::Url(url) => {
                let shown = || mcpq_schemas::redact::url(url);
                let response =
                    self.http
                        .get(url)
                        .send()
                        .await
                        .map_err(|source| ReadError::Fetch {
                            url: shown(),
                            source,
                        })?;
                if !response.status().is_success() {
                    return Err(ReadError::Status {
                        url: shown(),
                        status: response.status(),
                    });
                }
                read_capped(response, MAX_JWKS_BYTES).await?
            }
        };
        Ok(serde_json::from_str(&text)?)
    }
}

/// The largest key set read: a few dozen keys take a few KB.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// A response body as text, refused beyond `most` bytes (read chunk by chunk, never whole).
async fn read_capped(mut response: reqwest::Response, most: usize) -> Result<String, ReadError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Body)? {
        if body.len() + chunk.len() > most {
            return Err(ReadError::TooLarge { most });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8(body)?)
}

/// Why the issuer's key set could not be read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {source}")]
    Fetch {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: HTTP {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("the key set broke off: {0}")]
    Body(#[source] reqwest::Error),
    #[error("the key set is larger than {most} bytes")]
    TooLarge { most: usize },
    #[error("the key set is not UTF-8: {0}")]
    NotUtf8(#[from] std::string::FromUtf8Error),
    #[error("not a JSON Web Key Set: {0}")]
    NotKeySet(#[from] serde_json::Error),
}

fn unknown_key(kid: Option<&str>) -> Denied {
    Denied::Invalid(match kid {
        Some(kid) => format!("the token's key {kid:?} is not in the issuer's key set"),
        None => "the token names no key (kid) and the issuer has several".into(),
    })
}

impl Keys {
    fn find(&self, kid: Option<&str>) -> Option<Key> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None => match (self.anonymous.as_slice(), self.by_kid.len()) {
                ([only], 0) => Some(only.clone()),
                ([], 1) => self.by_kid.values().next().cloned(),
                _ => None,
            },
        }
    }

    fn replace(&mut self, set: JwkSet) {
        self.by_kid.clear();
        self.anonymous.clear();
        for jwk in set.keys {
            // Shared secrets have no place in a public key set.
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let key = Key {
                key,
                alg: jwk
                    .common
                    .key_algorithm
                    .and_then(|a| a.to_string().parse().ok()),
                rsa: matches!(jwk.algorithm, AlgorithmParameters::RSA(_)),
            };
            match jwk.common.key_id {
                Some(kid) => {
                    self.by_kid.insert(kid, key);
                }
                None => self.anonymous.push(key),
            }
        }
    }
}

/// The token's scopes: `scope` (space-separated) or `scp` (an array).
fn scopes(claims: &Value) -> Vec<&str> {
    let mut out: Vec<&str> = claims
        .get("scope")
        .and_then(Value::as_str)
        .map(|s| s.split_whitespace().collect())
        .unwrap_or_default();
    if let Some(Value::Array(list)) = claims.get("scp") {
        out.extend(list.iter().filter_map(Value::as_str));
    }
    out
}

/// Whether a claim equals or contains `value` (`*`: is present). `scope` strings count as lists.
fn claim_has(claim: Option<&Value>, value: &str) -> bool {
    match claim {
        None | Some(Value::Null) => false,
        Some(_) if value == "*" => true,
        Some(Value::String(s)) => s == value || s.split_whitespace().any(|part| part == value),
        Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(value)),
        Some(Value::Bool(b)) => b.to_string() == value,
        Some(Value::Number(n)) => n.to_string() == value,
        Some(Value::Object(_)) => false,
    }
}

/// A token error in words a caller can act on.
fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        K::InvalidIssuer => "the token is from another issuer".into(),
        K::InvalidAudience => "the token is not for this server (aud)".into(),
        K::InvalidSignature => "the token's signature does not verify".into(),
        K::MissingRequiredClaim(claim) => format!("the token has no {claim:?} claim"),
        other => format!("the token is not valid: {other:?}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_key_set_is_read_again_at_most_once_a_minute() {
        let now = Instant::now();
        let every = REFRESH_INTERVAL;
        assert!(may_refresh(None, now, every));
        assert!(!may_refresh(Some(now), now, every));
        assert!(!may_refresh(
            Some(now),
            now + Duration::from_secs(59),
            every
        ));
        assert!(may_refresh(Some(now), now + REFRESH_INTERVAL, every));
    }

    /// An RSA key, its key set (kid `a`), and tokens signed with it with the given `typ`.
    struct Issuer {
        set: serde_json::Value,
        encoding: jsonwebtoken::EncodingKey,
    }

    impl Issuer {
        fn new() -> Issuer {
            use base64::Engine;
            use rsa::{pkcs1::EncodeRsaPrivateKey, traits::PublicKeyParts};
            let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
            let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            let set = json!({"keys": [{"kty": "RSA", "kid": "a", "alg": "RS256",
                "n": b64(private.n().to_bytes_be()), "e": b64(private.e().to_bytes_be())}]});
            let pem = private.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap();
            let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
            Issuer { set, encoding }
        }

        fn token(&self, kid: &str, typ: Option<&str>) -> String {
            let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
            header.kid = Some(kid.into());
            header.typ = typ.map(str::to_string);
            let exp = mcpq_schemas::now_ms() / 1000 + 600;
            let claims =
                json!({"iss": "https://issuer.test", "aud": "mcpq", "sub": "ada", "exp": exp});
            jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
        }
    }

    fn config(jwks: JwksSource, require_access_token_type: bool) -> JwtConfig {
        JwtConfig {
            issuer: "https://issuer.test".into(),
            audiences: vec!["mcpq".into()],
            jwks,
            required_scopes: Vec::new(),
            leeway: Duration::from_secs(5),
            principal_claim: "sub".into(),
            rules: Vec::new(),
            require_access_token_type,
        }
    }

    #[tokio::test]
    async fn only_access_tokens_pass_when_the_config_says_so() {
        let issuer = Issuer::new();
        let path = std::env::temp_dir().join(format!("mcpq-jwks-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&path, issuer.set.to_string()).unwrap();
        let jwks = || JwksSource::File(path.to_string_lossy().into_owned());
        let strict = Verifier::new(config(jwks(), true)).unwrap();
        let lenient = Verifier::new(config(jwks(), false)).unwrap();
        for typ in ["at+jwt", "application/at+JWT"] {
            let caller = strict.verify(&issuer.token("a", Some(typ))).await;
            assert_eq!(caller.unwrap().principal(), Some("jwt:ada"), "{typ}");
        }
        for typ in [None, Some("JWT"), Some("id+jwt")] {
            let refused = strict.verify(&issuer.token("a", typ)).await;
            assert!(
                matches!(refused, Err(Denied::Invalid(m)) if m.contains("at+jwt")),
                "{typ:?}"
            );
            assert!(
                lenient.verify(&issuer.token("a", typ)).await.is_ok(),
                "{typ:?}"
            );
        }
        let _ = std::fs::remove_file(path);
    }

    /// An issuer whose key set turns hostile: the first read answers, the second stalls past
    /// the read timeout, the third is 2 MiB. Tokens with the known key pass throughout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_or_huge_key_set_holds_up_no_token_whose_key_is_known() {
        let issuer = Issuer::new();
        let set = issuer.set.clone();
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = reads.clone();
        let router = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let (set, n) = (
                    set.clone(),
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                );
                async move {
                    match n {
                        0 => set.to_string(),
                        1 => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            set.to_string()
                        }
                        _ => format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(2 << 20)),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let mut verifier = Verifier::new(config(
            JwksSource::Url(format!("http://{addr}/jwks")),
            false,
        ))
        .unwrap();
        verifier.refresh = Duration::ZERO;
        let verifier = std::sync::Arc::new(verifier);
        let token = |kid: &str| issuer.token(kid, None);
        let known = token("a");
        assert!(verifier.verify(&known).await.is_ok(), "the first read");
        // An unknown key starts a read that stalls; meanwhile the known key passes at once.
        let stalled = tokio::spawn({
            let (verifier, unknown) = (verifier.clone(), token("b"));
            async move { verifier.verify(&unknown).await.map(|_| ()) }
        });
        while reads.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(verifier.verify(&known).await.is_ok());
        assert!(!stalled.is_finished(), "the known key waited for the read");
        // The read gives up (5 s), and the unknown key is refused.
        assert!(matches!(stalled.await.unwrap(), Err(Denied::Invalid(m)) if m.contains("\"b\"")));
        // A 2 MiB key set is not read, and takes no known key away.
        assert!(verifier.verify(&token("c")).await.is_err());
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert!(verifier.verify(&known).await.is_ok());
    }

    #[test]
    fn claims_match_as_strings_lists_and_scopes() {
        let claims = json!({"sub": "ada", "groups": ["eng", "ops"], "scope": "mcp:call mcp:read", "admin": true});
        assert!(claim_has(claims.get("groups"), "eng"));
        assert!(!claim_has(claims.get("groups"), "sales"));
        assert!(claim_has(claims.get("scope"), "mcp:read"));
        assert!(claim_has(claims.get("sub"), "ada"));
        assert!(claim_has(claims.get("sub"), "*"));
        assert!(!claim_has(claims.get("missing"), "*"));
        assert!(claim_has(claims.get("admin"), "true"));
        assert_eq!(scopes(&claims), ["mcp:call", "mcp:read"]);
        assert_eq!(scopes(&json!({"scp": ["a", "b"]})), ["a", "b"]);
    }
}
