//! Webhooks: one signed POST with the final status, retried with backoff when the receiver fails, bounded.

use super::common::*;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vgen_server::config::ServerConfig;

/// What a receiver saw: each delivery's headers, body and arrival time.
type Seen = Arc<Mutex<Vec<(HeaderMap, Vec<u8>, Instant)>>>;

/// A receiver on a free port: `/flaky` answers 500 to its first delivery and 200 after, `/down` always 503.
async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = |seen: Seen, fail_first: Option<usize>| {
        move |headers: HeaderMap, body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                let mut s = seen.lock().unwrap();
                s.push((headers, body.to_vec(), Instant::now()));
                match fail_first {
                    Some(n) if s.len() <= n => StatusCode::INTERNAL_SERVER_ERROR,
                    Some(_) => StatusCode::NO_CONTENT,
                    None => StatusCode::SERVICE_UNAVAILABLE,
                }
            }
        }
    };
    let flaky: Seen = seen.clone();
    let down: Seen = seen.clone();
    let app = axum::Router::new()
        .route("/flaky", axum::routing::post(record(flaky, Some(1))))
        .route("/down", axum::routing::post(record(down, None)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn verify(headers: &HeaderMap, body: &[u8]) {
    let timestamp = headers["x-vgen-timestamp"].to_str().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(now.abs_diff(timestamp.parse().unwrap()) < 60, "a current timestamp");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(headers["x-vgen-signature"].to_str().unwrap(), format!("sha256={expected}"));
}

async fn wait_for_deliveries(seen: &Seen, n: usize) {
    let until = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < n {
        assert!(Instant::now() < until, "only {} of {n} deliveries", seen.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_webhook_is_signed_and_retried_after_a_failure() {
    let (url, seen) = receiver().await;
    let server = start(json!({})).await;
    let alpha = Client::new(&server, ALPHA);
    let mut body = small_job("hooked", 31);
    body["webhook_url"] = json!(format!("{url}/flaky"));
    let id = alpha.submit(body).await;
    wait_for_deliveries(&seen, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "a 2xx ends the retries");
    for (n, (headers, body, _)) in seen.iter().enumerate() {
        verify(headers, body);
        assert_eq!(headers["x-vgen-attempt"], (n + 1).to_string().as_str());
        assert_eq!(headers["x-vgen-delivery"], id.as_str());
        assert_eq!(headers["content-type"], "application/json");
        let status: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(status["job_id"], id);
        assert_eq!(status["status"], "completed");
        assert_eq!(status["result_url"], format!("{}/jobs/{id}/video", server.url()));
    }
    assert_eq!(seen[0].1, seen[1].1, "the same body on every attempt");
    // A wrong secret does not verify.
    let mut mac = Hmac::<Sha256>::new_from_slice(b"not-the-secret").unwrap();
    mac.update(seen[1].1.as_slice());
    assert_ne!(seen[1].0["x-vgen-signature"].to_str().unwrap(), format!("sha256={:x}", mac.finalize().into_bytes()));
    server.shutdown().await;
}

#[tokio::test]
async fn a_dead_receiver_gets_a_bounded_number_of_attempts_with_growing_gaps() {
    let (url, seen) = receiver().await;
    let server = start(json!({})).await;
    let alpha = Client::new(&server, ALPHA);
    let mut body =
        json!({"prompt": "broken !fail=invalid_argument", "model": "faulty", "duration": 0.5, "resolution": "64x48"});
    body["webhook_url"] = json!(format!("{url}/down"));
    let id = alpha.submit(body).await;
    assert_eq!(alpha.finish(&id).await["status"], "failed");
    wait_for_deliveries(&seen, 4).await;
    // max_attempts is 4 in the test configuration; backoff is at most 50 + 100 + 200 ms.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "exactly max_attempts deliveries");
    let status: Value = serde_json::from_slice(&seen[0].1).unwrap();
    assert_eq!(
        (status["status"].clone(), status["error"]["code"].clone()),
        (json!("failed"), json!("invalid_argument"))
    );
    let span = seen[3].2 - seen[0].2;
    assert!(span <= Duration::from_millis(350 + 500), "waits are capped: {span:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn webhooks_need_a_configured_secret() {
    let server = start(json!({"webhook": null})).await;
    let alpha = Client::new(&server, ALPHA);
    let mut body = small_job("no secret", 1);
    body["webhook_url"] = json!("http://127.0.0.1:9/hook");
    let r = alpha.post("/generate", body).await;
    assert_eq!((r.status, r.json()["error"]["field"].clone()), (400, json!("webhook_url")));
    server.shutdown().await;
}

/// Server-side request forgery: without `allow_networks`, a client cannot make the server post to this machine
/// or a private network, whether the URL names the address (refused at submit, 400) or a name that resolves to
/// it (refused when the delivery connects: the receiver sees nothing). Through the same server, a public-looking
/// configuration that lists loopback delivers as before (the tests above).
#[tokio::test]
async fn webhooks_go_only_to_public_addresses_unless_the_configuration_allows_more() {
    let (url, seen) = receiver().await;
    let port = url.rsplit(':').next().unwrap().to_string();
    let webhook = json!({"secret": SECRET, "max_attempts": 2, "initial_backoff_ms": 10, "max_backoff_ms": 20,
                         "timeout_ms": 2000});
    let server = start(json!({ "webhook": webhook })).await;
    let alpha = Client::new(&server, ALPHA);
    for refused in [
        format!("{url}/flaky"),
        format!("http://[::1]:{port}/flaky"),
        format!("http://[::ffff:127.0.0.1]:{port}/flaky"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/hook".to_string(),
    ] {
        let mut body = small_job("inward", 7);
        body["webhook_url"] = json!(refused);
        let r = alpha.post("/generate", body).await;
        assert_eq!((r.status, r.json()["error"]["field"].clone()), (400, json!("webhook_url")), "{refused}");
        assert!(r.json()["error"]["message"].as_str().unwrap().contains("allow_networks"), "{refused}");
    }
    let mut body = small_job("by name", 8);
    body["webhook_url"] = json!(format!("http://localhost:{port}/flaky"));
    let id = alpha.submit(body).await;
    assert_eq!(alpha.finish(&id).await["status"], "completed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(seen.lock().unwrap().is_empty(), "a name resolving to loopback is refused at connect time");
    server.shutdown().await;

    let bad = ServerConfig::from_json(
        &config_json(json!({"webhook": {"secret": SECRET, "allow_networks": ["10.0.0.0/40"]}})).to_string(),
    );
    assert!(bad.expect_err("refused").contains("webhook.allow_networks"));
}
