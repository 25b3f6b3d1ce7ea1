//! What the server's tests share: a server in this process on a free port, with two scopes, and a small client.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vgen_server::Server;
use vgen_server::config::ServerConfig;

pub const ALPHA: &str = "alpha-token-0123456789";
pub const BETA: &str = "beta-token-0123456789ab";
pub const SECRET: &str = "webhook-secret-0123456789";

/// The engine configuration most tests use: the CPU, and a short shutdown so a test never waits on a job.
pub fn engine_json() -> Value {
    json!({"devices": ["cpu"], "default_model": "testcard", "shutdown_timeout_ms": 200})
}

/// A results folder of its own for each server.
pub fn results_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgen-server-test-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The configuration file of a test server, with `patch`'s fields replacing the defaults.
pub fn config_json(patch: Value) -> Value {
    let mut config = json!({
        "listen": "127.0.0.1:0",
        "tokens": [{"token": ALPHA, "scope": "alpha"}, {"token": BETA, "scope": "beta"}],
        "results_dir": results_dir(),
        "max_body_bytes": 4096,
        "max_prompt_chars": 200,
        "webhook": {"secret": SECRET, "max_attempts": 4, "initial_backoff_ms": 50, "max_backoff_ms": 200, "timeout_ms": 2000,
                    "allow_networks": ["127.0.0.0/8"]},
        "engine": engine_json(),
    });
    for (k, v) in patch.as_object().unwrap() {
        config[k] = v.clone();
    }
    config
}

/// A server in this process, and its results folder, removed when the test shuts it down.
pub struct TestServer {
    server: Server,
    dir: PathBuf,
}

impl std::ops::Deref for TestServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl TestServer {
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn start(patch: Value) -> TestServer {
    let json = config_json(patch);
    let dir = PathBuf::from(json["results_dir"].as_str().unwrap());
    let config = ServerConfig::from_json(&json.to_string()).expect("a good test configuration");
    TestServer { server: Server::start(config).await.expect("the server starts"), dir }
}

pub struct Client {
    pub base: String,
    pub token: Option<String>,
    http: reqwest::Client,
}

/// A response's status, headers and body (as JSON where it is JSON).
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub bytes: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.bytes)))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string())
    }
    /// The error's message, for assertions.
    pub fn error_message(&self) -> String {
        self.json()["error"]["message"].as_str().unwrap_or_default().to_string()
    }
}

impl Client {
    pub fn new(server: &Server, token: &str) -> Self {
        Self { base: server.url(), token: Some(token.to_string()), http: reqwest::Client::new() }
    }

    /// A client of a server at `base` (a server in another process).
    pub fn at(base: &str, token: &str) -> Self {
        Self { base: base.to_string(), token: Some(token.to_string()), http: reqwest::Client::new() }
    }

    pub fn anonymous(server: &Server) -> Self {
        Self { base: server.url(), token: None, http: reqwest::Client::new() }
    }

    pub async fn send(&self, method: &str, path: &str, body: Option<String>, headers: &[(&str, &str)]) -> Reply {
        let url = if path.starts_with("http") { path.to_string() } else { format!("{}{path}", self.base) };
        let mut rb = self.http.request(method.parse().unwrap(), url);
        if let Some(t) = &self.token {
            rb = rb.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.header("content-type", "application/json").body(b);
        }
        let r = rb.send().await.expect("the server answers");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap().to_vec();
        Reply { status, headers, bytes }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send("POST", path, Some(body.to_string()), &[]).await
    }

    /// Submits and returns the job id, failing the test on anything but 202.
    pub async fn submit(&self, body: Value) -> String {
        let r = self.post("/generate", body).await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.bytes));
        r.json()["job_id"].as_str().unwrap().to_string()
    }

    /// Polls until the job reaches a terminal status; returns that status.
    pub async fn finish(&self, id: &str) -> Value {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let r = self.get(&format!("/jobs/{id}")).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
            let v = r.json();
            if ["completed", "failed", "cancelled"].contains(&v["status"].as_str().unwrap()) {
                return v;
            }
            assert!(Instant::now() < until, "{id} did not finish: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the job is in `status`.
    pub async fn wait_for(&self, id: &str, status: &str) -> Value {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.get(&format!("/jobs/{id}")).await.json();
            if v["status"] == status {
                return v;
            }
            assert!(Instant::now() < until, "{id} never became {status}: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A small, fast job on the test card.
pub fn small_job(prompt: &str, seed: u64) -> Value {
    json!({"prompt": prompt, "duration": 1, "fps": 8, "resolution": "64x48", "steps": 2, "seed": seed})
}

/// A job on the `faulty` model that takes about `steps × ms` milliseconds.
pub fn slow_job(seed: u64, steps: u32, ms: u32) -> Value {
    json!({"prompt": format!("slow card !slow={ms}"), "model": "faulty", "duration": 1, "fps": 8,
           "resolution": "64x48", "steps": steps, "seed": seed})
}

/// Checks that bytes are an MP4 file: a leading `ftyp` box of a sane size, a `moov` box, and some bulk.
pub fn assert_mp4(bytes: &[u8]) {
    assert!(bytes.len() > 1000, "only {} bytes", bytes.len());
    let size = u32::from_be_bytes(bytes[0..4].try_into().unwrap()) as usize;
    assert_eq!(&bytes[4..8], b"ftyp", "no ftyp box first");
    assert!((16..=256).contains(&size), "ftyp box of {size} bytes");
    assert!(bytes.windows(4).any(|w| w == b"moov"), "no moov box");
}

/// Opens the progress WebSocket of a job with a token.
pub async fn ws_connect(
    server: &vgen_server::Server,
    id: &str,
    token: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/progress/{id}", server.addr()).into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request).await.map(|(ws, _)| ws)
}
