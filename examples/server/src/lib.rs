//! # vgen-server
//!
//! An HTTP and WebSocket service that embeds the vgen engine, speaking the submit-then-poll protocol of the
//! hosted video APIs: `POST /generate`, `GET /jobs/{id}`, `GET /jobs/{id}/video`, `POST /jobs/{id}/cancel`,
//! `WS /progress/{id}`, with bearer tokens, per-scope isolation and signed webhooks. It uses only
//! `vgen_core`'s public API; see the README beside this crate for the contract.
//!
//! [`Server::start`] runs it inside a tokio runtime (what the tests do); [`run`] is the whole program, signals
//! included.

pub mod auth;
pub mod config;
pub mod destination;
pub mod envelope;
pub mod error;
pub mod generate;
pub mod openai;
pub mod page;
pub mod progress;
pub mod routes;
pub mod sheet;
pub mod status;
pub mod vertex;
pub mod webhook;

use crate::auth::Tokens;
use crate::config::ServerConfig;
use crate::routes::App;
use crate::webhook::Webhooks;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use vgen_core::engine::Engine;

/// How long shutdown waits for open HTTP connections, and then for webhooks still being delivered.
const HTTP_DRAIN: Duration = Duration::from_secs(5);
const WEBHOOK_DRAIN: Duration = Duration::from_secs(10);

/// A running HTTP server and its engine.
pub struct Server {
    addr: SocketAddr,
    engine: Arc<Engine>,
    webhooks: Option<Arc<Webhooks>>,
    stop_http: Option<oneshot::Sender<()>>,
    http: tokio::task::JoinHandle<()>,
}

/// Starts the engine the configuration describes, on the blocking pool (it probes devices).
async fn start_engine(config: &ServerConfig) -> Result<Arc<Engine>, String> {
    let engine_config = config.engine_config()?;
    tokio::task::spawn_blocking(move || Engine::new(engine_config))
        .await
        .map_err(|e| format!("engine start: {e}"))?
        .map(Arc::new)
        .map_err(|e| format!("engine: {e}"))
}

impl Server {
    /// Starts the engine and serves HTTP on the configured address (which must not be `null`).
    pub async fn start(config: ServerConfig) -> Result<Self, String> {
        let addr = config.listen_addr()?.ok_or("listen is null: this configuration is for a worker-only process")?;
        std::fs::create_dir_all(&config.results_dir)
            .map_err(|e| format!("results_dir {}: {e}", config.results_dir.display()))?;
        let results_dir = std::fs::canonicalize(&config.results_dir)
            .map_err(|e| format!("results_dir {}: {e}", config.results_dir.display()))?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("listen {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("listen {addr}: {e}"))?;
        let engine = start_engine(&config).await?;

        let (events, _) = broadcast::channel(1024);
        let notify = events.clone();
        engine.on_event(Arc::new(move |event: &vgen_core::engine::Event| {
            let _ = notify.send(event.job);
        }));
        let listen_url = format!("http://{addr}");
        let base_url = config.public_url.clone().unwrap_or_else(|| listen_url.clone());
        let (due, webhooks) = match config.webhook.clone() {
            Some(w) => {
                let webhooks = Arc::new(Webhooks::new(w)?);
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(webhooks.clone().run(engine.clone(), base_url.trim_end_matches('/').to_string(), rx));
                (Some(tx), Some(webhooks))
            }
            None => (None, None),
        };
        let destinations = webhooks.as_ref().map(|w| w.destinations().clone()).unwrap_or_default();
        let app = Arc::new(App {
            engine: engine.clone(),
            results_dir,
            public_url: config.public_url.clone(),
            listen_url,
            max_body_bytes: config.max_body_bytes,
            max_prompt_chars: config.max_prompt_chars,
            due,
            destinations,
            events,
            videos: Default::default(),
        });
        let router = routes::router(app, Arc::new(Tokens::new(&config.tokens)));
        let (stop_http, stopped) = oneshot::channel::<()>();
        let http = tokio::spawn(async move {
            let served = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = served.await {
                eprintln!("vgen-server: HTTP: {e}");
            }
        });
        Ok(Self { addr, engine, webhooks, stop_http: Some(stop_http), http })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<address>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Stops cleanly: the engine stops taking jobs (submits get 503) and lets running ones finish for its
    /// `shutdown_timeout_ms` while HTTP still answers status, video and progress requests; then HTTP closes,
    /// and webhooks still being delivered get a little longer.
    pub async fn shutdown(mut self) {
        shutdown_engine(&self.engine).await;
        if let Some(stop) = self.stop_http.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(HTTP_DRAIN, &mut self.http).await.is_err() {
            self.http.abort();
        }
        if let Some(w) = &self.webhooks {
            w.drain(WEBHOOK_DRAIN).await;
        }
    }
}

async fn shutdown_engine(engine: &Arc<Engine>) {
    let e = engine.clone();
    let timeout = Duration::from_millis(engine.config().shutdown_timeout_ms);
    let _ = tokio::task::spawn_blocking(move || e.shutdown(timeout)).await;
}

/// The whole program: serves until `stop` resolves (SIGTERM or SIGINT in the binary), then shuts down cleanly.
/// With `listen: null` it runs the engine alone, as a worker of a distributed engine. `ready` gets the line to
/// print once it is up.
pub async fn run(
    config: ServerConfig,
    stop: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(String),
) -> Result<(), String> {
    if config.listen.is_none() {
        let engine = start_engine(&config).await?;
        let devices: Vec<String> = engine.devices().iter().map(|(d, _)| d.to_string()).collect();
        ready(format!("vgen-server: worker only (no HTTP), engine on {}", devices.join(", ")));
        stop.await;
        shutdown_engine(&engine).await;
        return Ok(());
    }
    let server = Server::start(config).await?;
    ready(format!("vgen-server listening on {}", server.url()));
    stop.await;
    server.shutdown().await;
    Ok(())
}
