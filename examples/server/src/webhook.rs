//! Webhooks: one signed POST when a job finishes, retried with exponential backoff and full jitter.
//!
//! The body is the job's final status, the same JSON `GET /jobs/{id}` returns. Receivers verify
//!
//! ```text
//! X-Vgen-Timestamp: <unix seconds>
//! X-Vgen-Signature: sha256=<hex of HMAC-SHA256(secret, "<timestamp>.<body>")>
//! ```
//!
//! and should refuse timestamps far from their clock (replays). `X-Vgen-Delivery` (the job id) is the same on
//! every attempt, so a receiver can drop duplicates: delivery is at least once, bounded by
//! `webhook.max_attempts`.
//!
//! The trigger is the job's own engine callback, registered by the process that accepted the job, so exactly
//! one process delivers each webhook; a delivery is lost if that process dies first.

use crate::config::WebhookConfig;
use crate::generate::hex;
use crate::status::status_json;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;
use vgen_core::engine::{Engine, JobId};

/// A job whose webhook is due: sent from the engine's dispatcher thread to the delivery task.
pub struct Due {
    pub id: JobId,
    pub url: String,
}

/// Deliveries in progress at once, retries' waits included.
pub const MAX_IN_FLIGHT: usize = 64;

pub struct Webhooks {
    config: WebhookConfig,
    destinations: crate::destination::Destinations,
    client: reqwest::Client,
    tracker: TaskTracker,
}

/// The signature header's value for a body sent at `timestamp`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// The wait before attempt `attempt + 1`: uniform in [0, min(max, initial · 2^(attempt-1))] ("full jitter", the
/// engine's own schedule: `vgen_core::backoff`), so receivers that failed together are not retried in step.
pub fn backoff(config: &WebhookConfig, attempt: u32, unit_random: f64) -> Duration {
    vgen_core::backoff::Backoff::new(
        Duration::from_millis(config.initial_backoff_ms),
        Duration::from_millis(config.max_backoff_ms),
    )
    .delay(attempt, unit_random)
}

impl Webhooks {
    pub fn new(config: WebhookConfig) -> Result<Self, String> {
        let destinations = config.destinations()?;
        let client = reqwest::Client::builder()
            // A redirect could point a delivery inward (see destination.rs); a receiver answers 2xx or fails.
            .redirect(reqwest::redirect::Policy::none())
            // Names resolve to permitted addresses only, at the moment of connecting.
            .dns_resolver(std::sync::Arc::new(destinations.clone()))
            .no_proxy()
            .user_agent(concat!("vgen-server/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        Ok(Self { config, destinations, client, tracker: TaskTracker::new() })
    }

    /// The addresses deliveries may reach, which the API also checks a `webhook_url` against at submit.
    pub fn destinations(&self) -> &crate::destination::Destinations {
        &self.destinations
    }

    /// Runs deliveries as jobs become due, until every sender is dropped. At most [`MAX_IN_FLIGHT`] at once: a
    /// burst of finished jobs waits in the channel rather than opening thousands of connections.
    pub async fn run(
        self: Arc<Self>,
        engine: Arc<Engine>,
        base_url: String,
        mut due: tokio::sync::mpsc::UnboundedReceiver<Due>,
    ) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        while let Some(job) = due.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let (this, engine, base_url) = (self.clone(), engine.clone(), base_url.clone());
            self.tracker.spawn(async move {
                this.deliver(&engine, job, &base_url).await;
                drop(slot);
            });
        }
    }

    /// Waits up to `limit` for deliveries in progress (at shutdown).
    pub async fn drain(&self, limit: Duration) {
        self.tracker.close();
        let _ = tokio::time::timeout(limit, self.tracker.wait()).await;
    }

    async fn deliver(&self, engine: &Arc<Engine>, job: Due, base_url: &str) {
        let e = engine.clone();
        let id = job.id;
        let status = match tokio::task::spawn_blocking(move || e.poll(id)).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => return eprintln!("vgen-server: webhook for {id}: {e}"),
            Err(e) => return eprintln!("vgen-server: webhook for {id}: {e}"),
        };
        // Checked again here: the URL may come from another process of the cluster, or an older configuration.
        let refused =
            reqwest::Url::parse(&job.url).map_err(|e| e.to_string()).and_then(|u| self.destinations.check_url(&u));
        if let Err(e) = refused {
            return eprintln!("vgen-server: webhook for {id} to {} refused: {e}", job.url);
        }
        let body = serde_json::to_vec(&status_json(&status, base_url)).expect("a JSON value serialises");
        let max = self.config.max_attempts;
        for attempt in 1..=max {
            let timestamp =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let sent = self
                .client
                .post(&job.url)
                .header("content-type", "application/json")
                .header("x-vgen-event", "job.finished")
                .header("x-vgen-delivery", id.to_string())
                .header("x-vgen-attempt", attempt.to_string())
                .header("x-vgen-timestamp", timestamp.to_string())
                .header("x-vgen-signature", signature(self.config.secret.as_bytes(), timestamp, &body))
                .body(body.clone())
                .send()
                .await;
            let failure = match sent {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => e.to_string(),
            };
            if attempt == max {
                eprintln!("vgen-server: webhook for {id} to {} failed {max} times, giving up: {failure}", job.url);
                return;
            }
            tokio::time::sleep(backoff(&self.config, attempt, rand::random::<f64>())).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // The expected value is Python's: hmac.new(key, b"1700000000." + body, hashlib.sha256).hexdigest()
        let s = signature(b"key-0123456789abcdef", 1700000000, br#"{"a":1}"#);
        assert_eq!(s, "sha256=8a091117e0b1ccf5034d0d8c06ab42b29a4451a72f95b56f22afaf6bfb7af0d3");
        assert_eq!(s.len(), 7 + 64);
        assert_ne!(s, signature(b"key-0123456789abcdef", 1700000001, br#"{"a":1}"#));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_full_jitter() {
        let c = WebhookConfig {
            secret: String::new(),
            max_attempts: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 350,
            timeout_ms: 1,
            allow_networks: Vec::new(),
        };
        assert_eq!(backoff(&c, 1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(&c, 2, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(&c, 3, 1.0), Duration::from_millis(350));
        assert_eq!(backoff(&c, 3, 0.0), Duration::ZERO);
        assert_eq!(backoff(&c, 2, 0.5), Duration::from_millis(100));
    }
}
