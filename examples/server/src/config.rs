//! The server's configuration file: strict JSON, unknown fields are errors that name the field.
//!
//! The `engine` object is the engine's own configuration and is passed through unchanged: the server never looks
//! inside it, so whatever the engine's configuration can select (devices, limits, a distributed backend) works
//! here without a change to the server.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use vgen_core::engine::EngineConfig;

/// The whole file. See the crate's README for an example.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Where to serve HTTP (`"127.0.0.1:8080"`, port 0 for any free port). `null`: a worker-only process that runs
    /// the engine without HTTP until SIGTERM or SIGINT.
    pub listen: Option<String>,
    /// Bearer tokens, each with the scope whose jobs it may see.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// The folder the videos are written to; created if missing.
    pub results_dir: PathBuf,
    /// The URL clients reach this server at (`https://video.example.com`), for `result_url` and webhooks. Left
    /// out, the request's `Host` header is used, and the listening address for webhooks.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Request bodies larger than this are refused with 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// The longest prompt accepted, in characters (the engine's own limit applies too).
    #[serde(default = "default_max_prompt_chars")]
    pub max_prompt_chars: usize,
    /// Webhook signing and delivery. Left out, requests that name a `webhook_url` are refused.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// The engine's configuration (`EngineConfig`), kept as JSON and parsed by the engine's own strict parser.
    #[serde(default = "empty_object")]
    pub engine: serde_json::Value,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub token: String,
    pub scope: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The HMAC-SHA256 key receivers verify `X-Vgen-Signature` with. At least 16 bytes.
    pub secret: String,
    /// Deliveries tried in all, the first included.
    #[serde(default = "default_webhook_attempts")]
    pub max_attempts: u32,
    /// The first retry waits up to this long; each later one up to twice the one before (full jitter).
    #[serde(default = "default_webhook_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// The cap on one wait between attempts.
    #[serde(default = "default_webhook_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// The time limit of one delivery attempt.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// Networks that are not public but may receive webhooks (CIDR, e.g. `["10.20.0.0/16", "127.0.0.1"]`).
    /// Left out, webhooks go only to public addresses: never to this machine, a private network or a link-local
    /// address such as a cloud's metadata service (see `destination.rs`).
    #[serde(default)]
    pub allow_networks: Vec<String>,
}

impl WebhookConfig {
    /// The addresses deliveries may reach.
    pub fn destinations(&self) -> Result<crate::destination::Destinations, String> {
        let networks = self
            .allow_networks
            .iter()
            .map(|n| n.parse().map_err(|e| format!("webhook.allow_networks: {e}")))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(crate::destination::Destinations::new(networks))
    }
}

/// The most delivery attempts a configuration may ask for, so a dead receiver is not called for days.
pub const MAX_WEBHOOK_ATTEMPTS: u32 = 20;

fn default_max_body_bytes() -> usize {
    64 * 1024
}
fn default_max_prompt_chars() -> usize {
    2000
}
fn default_webhook_attempts() -> u32 {
    5
}
fn default_webhook_backoff_ms() -> u64 {
    500
}
fn default_webhook_max_backoff_ms() -> u64 {
    30_000
}
fn default_webhook_timeout_ms() -> u64 {
    10_000
}
fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl ServerConfig {
    /// Parses and checks a configuration. Errors name the field.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let config: Self = strict_json(json)?;
        config.check()?;
        Ok(config)
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The engine's configuration, parsed by the engine.
    pub fn engine_config(&self) -> Result<EngineConfig, String> {
        EngineConfig::from_json(&self.engine.to_string()).map_err(|e| format!("engine: {}", e.message()))
    }

    /// The address to listen on, or `None` for a worker-only process.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        self.listen
            .as_deref()
            .map(|l| l.parse().map_err(|e| format!("listen {l:?} is not an address like 127.0.0.1:8080: {e}")))
            .transpose()
    }

    fn check(&self) -> Result<(), String> {
        self.listen_addr()?;
        if self.listen.is_some() && self.tokens.is_empty() {
            return Err("tokens is empty: every route needs a bearer token, so no client could use the server".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if !seen.insert(&t.token) {
                return Err(format!("tokens[{i}].token is listed twice: each token grants exactly one scope"));
            }
            if t.token.len() < 16 {
                return Err(format!("tokens[{i}].token has {} bytes; use at least 16 random ones", t.token.len()));
            }
            if t.scope.is_empty() || t.scope.len() > 128 {
                return Err(format!("tokens[{i}].scope must have 1 to 128 bytes"));
            }
        }
        if self.max_body_bytes == 0 {
            return Err("max_body_bytes must be positive".into());
        }
        if self.max_prompt_chars == 0 {
            return Err("max_prompt_chars must be positive".into());
        }
        if let Some(url) = &self.public_url {
            let parsed = reqwest::Url::parse(url).map_err(|e| format!("public_url {url:?}: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("public_url {url:?} must be http or https"));
            }
        }
        if let Some(w) = &self.webhook {
            if w.secret.len() < 16 {
                return Err(format!("webhook.secret has {} bytes; use at least 16 random ones", w.secret.len()));
            }
            if w.max_attempts == 0 || w.max_attempts > MAX_WEBHOOK_ATTEMPTS {
                return Err(format!("webhook.max_attempts must be 1 to {MAX_WEBHOOK_ATTEMPTS}"));
            }
            if w.timeout_ms == 0 {
                return Err("webhook.timeout_ms must be positive".into());
            }
            w.destinations()?;
        }
        if !self.engine.is_object() {
            return Err("engine must be an object (the engine's configuration)".into());
        }
        self.engine_config()?;
        Ok(())
    }
}

/// Parses JSON into `T`, naming the field an error is about.
pub(crate) fn strict_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_str(json);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() { inner.to_string() } else { format!("field `{path}`: {inner}") }
    })?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"listen": "127.0.0.1:0", "tokens": [{"token": "0123456789abcdef", "scope": "a"}],
        "results_dir": "/tmp/x", "engine": {"queue_capacity": 4}}"#;

    #[test]
    fn a_good_config_parses_and_passes_the_engine_part_through() {
        let c = ServerConfig::from_json(GOOD).unwrap();
        assert_eq!(c.engine_config().unwrap().queue_capacity, 4);
        assert_eq!(c.max_body_bytes, 64 * 1024);
    }

    #[test]
    fn unknown_fields_are_errors_that_name_them() {
        let e = ServerConfig::from_json(&GOOD.replace("\"listen\"", "\"lisen\"")).unwrap_err();
        assert!(e.contains("lisen"), "{e}");
        let e = ServerConfig::from_json(&GOOD.replace("queue_capacity", "queue_capacty")).unwrap_err();
        assert!(e.contains("engine") && e.contains("queue_capacty"), "{e}");
        let e = ServerConfig::from_json(&GOOD.replace("\"scope\"", "\"scop\"")).unwrap_err();
        assert!(e.contains("scop"), "{e}");
    }

    #[test]
    fn weak_secrets_and_bad_addresses_are_refused() {
        assert!(ServerConfig::from_json(&GOOD.replace("0123456789abcdef", "short")).is_err());
        assert!(ServerConfig::from_json(&GOOD.replace("127.0.0.1:0", "localhost")).is_err());
        let twice = GOOD.replace(
            r#"{"token": "0123456789abcdef", "scope": "a"}"#,
            r#"{"token": "0123456789abcdef", "scope": "a"}, {"token": "0123456789abcdef", "scope": "b"}"#,
        );
        assert!(ServerConfig::from_json(&twice).unwrap_err().contains("twice"));
        let worker =
            GOOD.replace("\"127.0.0.1:0\"", "null").replace(r#"{"token": "0123456789abcdef", "scope": "a"}"#, "");
        assert!(ServerConfig::from_json(&worker).unwrap().listen_addr().unwrap().is_none());
    }
}
