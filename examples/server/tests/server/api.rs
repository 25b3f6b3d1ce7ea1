//! The HTTP contract, against a server in this process on a free port with the built-in test models.

use super::common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_job_goes_from_submit_to_a_downloadable_mp4() {
    let server = start(json!({})).await;
    let alpha = Client::new(&server, ALPHA);
    let r = alpha
        .post(
            "/generate",
            json!({"prompt": "a red circle", "duration": 1.5, "resolution": "64x48", "steps": 3, "seed": 7}),
        )
        .await;
    assert_eq!(r.status, 202);
    let submitted = r.json();
    let id = submitted["job_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("job-"), "{id}");
    assert_eq!(submitted["status_url"], format!("{}/jobs/{id}", server.url()));

    let done = alpha.finish(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"], 100.0);
    assert_eq!(done["error"], serde_json::Value::Null);
    assert_eq!(done["eta_seconds"], 0.0);
    assert_eq!(done["stage"], "finalizing");
    let url = done["result_url"].as_str().unwrap();
    assert_eq!(url, format!("{}/jobs/{id}/video", server.url()));

    let video = alpha.get(url).await;
    assert_eq!(video.status, 200);
    assert_eq!(video.header("content-type").as_deref(), Some("video/mp4"));
    assert_eq!(video.header("content-length"), Some(video.bytes.len().to_string()));
    assert_mp4(&video.bytes);

    // The file is where the engine's request says, inside the results folder, and nothing is kept in memory.
    let request = server.engine().request(vgen_server::status::parse_job_id(&id).unwrap()).unwrap();
    assert_eq!(request.metadata["owner"], "alpha");
    assert_eq!(request.keep_frames, Some(false));
    assert_eq!(request.num_frames, Some(13), "1.5 s at 8 fps is 12 frames; the test card takes 1+4k");
    assert_eq!(std::fs::read(&request.outputs[0]).unwrap(), video.bytes);
    server.shutdown().await;
}

#[tokio::test]
async fn resolution_shorthand_and_model_defaults() {
    let server = start(json!({})).await;
    let alpha = Client::new(&server, ALPHA);
    let id = alpha.submit(json!({"prompt": "a blue square", "resolution": "144p", "duration": 0.5, "steps": 1})).await;
    let request = server.engine().request(vgen_server::status::parse_job_id(&id).unwrap()).unwrap();
    assert_eq!((request.width, request.height, request.num_frames), (Some(256), Some(144), Some(5)));
    assert_eq!(request.fps, Some(8.0), "the model's default frame rate");
    let id = alpha.submit(json!({"prompt": "all defaults"})).await;
    let request = server.engine().request(vgen_server::status::parse_job_id(&id).unwrap()).unwrap();
    assert_eq!((request.width, request.num_frames, request.fps), (None, None, None));
    assert_eq!(alpha.finish(&id).await["status"], "completed");
    server.shutdown().await;
}

#[tokio::test]
async fn a_job_is_cancelled_and_has_no_video() {
    let server = start(json!({})).await;
    let alpha = Client::new(&server, ALPHA);
    let id = alpha.submit(slow_job(1, 200, 50)).await;
    alpha.wait_for(&id, "running").await;
    let early = alpha.get(&format!("/jobs/{id}/video")).await;
    assert_eq!(early.status, 409, "no video while running");
    assert_eq!(early.json()["error"]["code"], "not_ready");

    let r = alpha.post(&format!("/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["cancelled"], true);
    let done = alpha.finish(&id).await;
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["error"]["code"], "cancelled");
    assert_eq!(done["result_url"], serde_json::Value::Null);
    let video = alpha.get(&format!("/jobs/{id}/video")).await;
    assert_eq!(video.status, 409);
    assert_eq!(video.json()["error"]["code"], "cancelled");
    // Cancelling again is harmless and says it did nothing.
    let again = alpha.post(&format!("/jobs/{id}/cancel"), json!({})).await;
    assert_eq!((again.status, again.json()["cancelled"].clone()), (200, json!(false)));
    server.shutdown().await;
}

#[tokio::test]
async fn every_route_needs_a_valid_bearer_token() {
    let server = start(json!({})).await;
    let alpha = Client::new(&server, ALPHA);
    let id = alpha.submit(small_job("auth", 1)).await;
    let anonymous = Client::anonymous(&server);
    let wrong = Client::at(&server.url(), "alpha-token-0123456788");
    for client in [&anonymous, &wrong] {
        for (method, path) in [
            ("POST", "/generate".to_string()),
            ("GET", format!("/jobs/{id}")),
            ("GET", format!("/jobs/{id}/video")),
            ("POST", format!("/jobs/{id}/cancel")),
            ("GET", format!("/progress/{id}")),
            ("GET", "/no/such/route".to_string()),
        ] {
            let r = client.send(method, &path, Some(small_job("x", 2).to_string()), &[]).await;
            assert_eq!(r.status, 401, "{method} {path}");
            assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"), "{method} {path}");
            assert_eq!(r.json()["error"]["code"], "unauthorized");
        }
    }
    let basic = anonymous.send("GET", &format!("/jobs/{id}"), None, &[("authorization", "Basic YWxwaGE6eA==")]).await;
    assert_eq!(basic.status, 401);
    server.shutdown().await;
}

#[tokio::test]
async fn another_scope_sees_nothing_of_a_job() {
    let server = start(json!({})).await;
    let alpha = Client::new(&server, ALPHA);
    let beta = Client::new(&server, BETA);
    let id = alpha.submit(small_job("mine", 3)).await;
    alpha.finish(&id).await;
    for (method, path) in [
        ("GET", format!("/jobs/{id}")),
        ("GET", format!("/jobs/{id}/video")),
        ("POST", format!("/jobs/{id}/cancel")),
        ("GET", format!("/progress/{id}")),
    ] {
        let theirs = beta.send(method, &path, None, &[]).await;
        let missing = beta.send(method, &path.replace(&id, "job-999999"), None, &[]).await;
        assert_eq!((theirs.status, missing.status), (404, 404), "{method} {path}");
        assert_eq!(theirs.json()["error"]["code"], "not_found");
        assert_eq!(theirs.error_message().replace(&id, "ID"), missing.error_message().replace("job-999999", "ID"));
    }
    // The WebSocket handshake is refused the same way.
    let err = ws_connect(&server, &id, BETA).await.unwrap_err();
    assert!(matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 404), "{err}");
    // The job was not cancelled by the other scope's attempt, and its owner still has it.
    assert_eq!(alpha.get(&format!("/jobs/{id}")).await.json()["status"], "completed");
    assert_eq!(alpha.get(&format!("/jobs/{id}/video")).await.status, 200);
    // Ids that are not ids are 404 too.
    for bad in ["job-0", "7", "job-x", "..%2F..%2Fetc"] {
        assert_eq!(alpha.get(&format!("/jobs/{bad}")).await.status, 404, "{bad}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_400_and_name_the_field() {
    let server = start(json!({})).await;
    let alpha = Client::new(&server, ALPHA);
    let cases = [
        (json!({"prompt": "x", "resolution": "big"}), "resolution"),
        (json!({"prompt": "x", "resolution": "100x64"}), "resolution"),
        (json!({"prompt": "x", "resolution": "4096x64"}), "resolution"),
        (json!({"prompt": "x", "duration": -1}), "duration"),
        (json!({"prompt": "x", "duration": 0}), "duration"),
        (json!({"prompt": "x", "duration": 3600}), "duration"),
        (json!({"prompt": "x", "duration": "5"}), "duration"),
        (json!({"prompt": "x", "fps": 0}), "fps"),
        (json!({"prompt": "x", "colour": "red"}), "colour"),
        (json!({"prompt": "x", "steps": 0}), "steps"),
        (json!({"prompt": "x", "guidance_scale": 99}), "guidance_scale"),
        (json!({"prompt": "x", "priority": 1000}), "priority"),
        (json!({"prompt": "x", "model": "nonexistent"}), "model"),
        (json!({"prompt": "   "}), "prompt"),
        (json!({"prompt": "x".repeat(201)}), "prompt"),
        (json!({"duration": 1}), "prompt"),
        (json!({"prompt": "x", "webhook_url": "ftp://example.com/hook"}), "webhook_url"),
        (json!({"prompt": "x", "webhook_url": "not a url"}), "webhook_url"),
        (json!({"prompt": "x", "sampler": {"timesteps": [500, 750]}}), "sampler"),
        (json!({"prompt": "x", "step_cache": {"threshold": 0}}), "step_cache"),
        (json!({"prompt": "x", "step_cache": 0.1}), "step_cache"),
    ];
    for (body, field) in cases {
        let r = alpha.post("/generate", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", String::from_utf8_lossy(&r.bytes));
        let e = r.json()["error"].clone();
        assert_eq!(e["field"], field, "{body}: {e}");
        assert!(e["message"].as_str().unwrap().contains(field), "{body}: {e}");
        assert_eq!(e["code"], "invalid_argument");
    }
    for raw in ["{\"prompt\": ", "[1, 2]", "", "null"] {
        let r = alpha.send("POST", "/generate", Some(raw.to_string()), &[]).await;
        assert_eq!(r.status, 400, "{raw:?}");
        assert_eq!(r.json()["error"]["field"], "body", "{raw:?}");
    }
    let r = alpha.send("POST", "/generate", Some(small_job("x", 1).to_string()), &[("idempotency-key", "")]).await;
    assert_eq!((r.status, r.json()["error"]["field"].clone()), (400, json!("Idempotency-Key")));
    server.shutdown().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let server = start(json!({"max_body_bytes": 1024})).await;
    let alpha = Client::new(&server, ALPHA);
    let big = json!({"prompt": "y".repeat(2000)});
    let r = alpha.post("/generate", big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "payload_too_large");
    // Without a Content-Length too (chunked): the limit holds while reading.
    let status = chunked_post(&server, 40, 100).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    server.shutdown().await;
}

/// POSTs `chunks` chunks of `size` spaces to /generate with chunked transfer encoding; returns the status line.
async fn chunked_post(server: &vgen_server::Server, chunks: usize, size: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "POST /generate HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ALPHA}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        server.addr()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..chunks {
        // The server may answer and close before the whole body is sent.
        if tcp.write_all(format!("{size:x}\r\n{}\r\n", " ".repeat(size)).as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut reply = vec![0u8; 256];
    let n = tcp.read(&mut reply).await.unwrap();
    String::from_utf8_lossy(&reply[..n]).lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_full_queue_is_429_with_retry_after() {
    let engine = json!({"devices": ["cpu"], "default_model": "testcard", "queue_capacity": 1, "workers_per_device": 1, "shutdown_timeout_ms": 100});
    let server = start(json!({"engine": engine})).await;
    let alpha = Client::new(&server, ALPHA);
    let running = alpha.submit(slow_job(1, 200, 50)).await;
    alpha.wait_for(&running, "running").await;
    let queued = alpha.submit(slow_job(2, 200, 50)).await;
    assert_eq!(alpha.get(&format!("/jobs/{queued}")).await.json()["status"], "pending");
    let r = alpha.post("/generate", slow_job(3, 200, 50)).await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.bytes));
    let retry_after: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    assert_eq!(r.json()["error"]["code"], "queue_full");
    for id in [&running, &queued] {
        assert_eq!(alpha.post(&format!("/jobs/{id}/cancel"), json!({})).await.status, 200);
    }
    server.shutdown().await;
}

/// A user whose requests always fail (an internal error, a panic) cannot take the only device out of rotation:
/// each such request fails alone after one retry, and another user's request still runs.
#[tokio::test]
async fn one_users_failing_requests_do_not_deny_service_to_the_rest() {
    let engine = json!({"devices": ["cpu"], "default_model": "testcard", "breaker": {"failure_threshold": 2,
                        "cooldown_ms": 60000}, "retry": {"base_delay_ms": 1, "max_delay_ms": 5}, "shutdown_timeout_ms": 100});
    let server = start(json!({"engine": engine})).await;
    let (alpha, beta) = (Client::new(&server, ALPHA), Client::new(&server, BETA));
    for (i, prompt) in ["!fail=internal*100 bad", "!panic*100 bad", "!fail=internal*100 worse"].into_iter().enumerate()
    {
        let id = alpha
            .submit(json!({"prompt": prompt, "model": "faulty", "duration": 0.5, "resolution": "64x48", "seed": i}))
            .await;
        let done = alpha.finish(&id).await;
        assert_eq!(done["status"], "failed", "{prompt}");
        assert!(done["error"]["message"].as_str().unwrap().contains("a fault of this request"), "{done}");
    }
    let id = beta.submit(small_job("another user's request", 12)).await;
    assert_eq!(beta.finish(&id).await["status"], "completed");
    server.shutdown().await;
}

#[tokio::test]
async fn no_healthy_device_is_503_with_retry_after() {
    let engine = json!({"devices": ["cpu"], "default_model": "testcard", "retry": {"max_attempts": 1},
                        "breaker": {"failure_threshold": 1, "cooldown_ms": 60000}, "shutdown_timeout_ms": 100});
    let server = start(json!({"engine": engine})).await;
    let alpha = Client::new(&server, ALPHA);
    let id = alpha
        .submit(json!({"prompt": "device lost !fail=unavailable", "model": "faulty", "duration": 0.5, "resolution": "64x48"}))
        .await;
    let done = alpha.finish(&id).await;
    assert_eq!((done["status"].clone(), done["error"]["code"].clone()), (json!("failed"), json!("unavailable")));
    let r = alpha.post("/generate", small_job("after the failure", 9)).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.bytes));
    assert_eq!(r.json()["error"]["code"], "unavailable");
    let retry_after: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((50..=60).contains(&retry_after), "{retry_after}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_stopping_engine_is_503_while_status_still_answers() {
    let server = start(json!({})).await;
    let alpha = Client::new(&server, ALPHA);
    let id = alpha.submit(small_job("before the stop", 4)).await;
    alpha.finish(&id).await;
    let engine = server.engine().clone();
    tokio::task::spawn_blocking(move || engine.shutdown(Duration::from_millis(100))).await.unwrap();
    let r = alpha.post("/generate", small_job("after the stop", 5)).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "shutting_down");
    assert_eq!(alpha.get(&format!("/jobs/{id}")).await.json()["status"], "completed");
    assert_eq!(alpha.get(&format!("/jobs/{id}/video")).await.status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_job_within_a_scope() {
    let server = start(json!({})).await;
    let alpha = Client::new(&server, ALPHA);
    let beta = Client::new(&server, BETA);
    let body = small_job("only once", 11).to_string();
    let key = [("idempotency-key", "order-17")];
    let first = alpha.send("POST", "/generate", Some(body.clone()), &key).await.json()["job_id"].clone();
    let again = alpha.send("POST", "/generate", Some(body.clone()), &key).await;
    assert_eq!((again.status, again.json()["job_id"].clone()), (202, first.clone()));
    // The same key with a different request is a conflict, not a silent second job.
    let other = small_job("something else", 11).to_string();
    let conflict = alpha.send("POST", "/generate", Some(other), &key).await;
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.json()["error"]["code"], "already_exists");
    // Keys belong to a scope: beta's "order-17" is beta's own job.
    let theirs = beta.send("POST", "/generate", Some(body), &key).await.json()["job_id"].clone();
    assert_ne!(theirs, first);
    let first = first.as_str().unwrap();
    assert_eq!(alpha.finish(first).await["status"], "completed");
    assert_mp4(&alpha.get(&format!("/jobs/{first}/video")).await.bytes);
    assert_eq!(beta.finish(theirs.as_str().unwrap()).await["status"], "completed");
    server.shutdown().await;
}

#[tokio::test]
async fn a_storyboard_and_a_duration_past_the_native_length_are_made_in_parts() {
    let server = start(json!({})).await;
    let alpha = Client::new(&server, ALPHA);
    let parts = |id: &str| {
        let video = server.engine().result(vgen_server::status::parse_job_id(id).unwrap()).unwrap();
        video.metadata.segments.iter().map(|s| (s.prompt.clone(), s.start_frame, s.frames)).collect::<Vec<_>>()
    };
    let body = json!({"segments": ["red", {"prompt": "green", "num_frames": 4}], "resolution": "32x32", "steps": 2});
    let id = alpha.submit(body).await;
    assert_eq!(alpha.finish(&id).await["status"], "completed");
    assert_eq!(parts(&id), [("red".to_string(), 0, 17), ("green".to_string(), 17, 4)]);
    // 4 s at 8 fps is 33 frames: the test card's 17, then 16 more from its last frame.
    let id = alpha.submit(json!({"prompt": "long", "duration": 4, "resolution": "32x32", "steps": 1})).await;
    assert_eq!(alpha.finish(&id).await["status"], "completed");
    assert_eq!(parts(&id), [("long".to_string(), 0, 17), ("long".to_string(), 17, 16)]);
    // The OpenAI door's `seconds` past the native length likewise (its JSON form here; the SDK sends the same
    // fields as a multipart form).
    let r = alpha.post("/v1/videos", json!({"prompt": "long too", "seconds": "4", "size": "32x32"})).await;
    assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.bytes));
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(alpha.finish(&id).await["status"], "completed");
    assert_eq!(parts(&id), [("long too".to_string(), 0, 17), ("long too".to_string(), 17, 16)]);
    // And Vertex's `durationSeconds`.
    let body = json!({"instances": [{"prompt": "longer"}], "parameters": {"durationSeconds": 4}});
    let r = alpha.post("/v1beta1/publishers/google/models/testcard:predictLongRunning", body).await;
    assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.bytes));
    let name = r.json()["name"].as_str().unwrap().to_string();
    let id = name.rsplit_once("/operations/").unwrap().1.to_string();
    assert_eq!(alpha.finish(&id).await["status"], "completed");
    assert_eq!(parts(&id), [("longer".to_string(), 0, 17), ("longer".to_string(), 17, 16)]);
    let r = alpha.post("/generate", json!({"prompt": "x", "segments": ["a", "b"]})).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("not both"), "{}", r.json());
    server.shutdown().await;
}
