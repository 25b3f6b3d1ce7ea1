//! `WS /progress/{id}`: every event of the job, in order, from the first, ending with the terminal one.

use super::common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Reads messages until the server closes; returns the events and the close code.
async fn read_all(server: &vgen_server::Server, id: &str) -> (Vec<Value>, Option<u16>) {
    let mut ws = ws_connect(server, id, ALPHA).await.expect("the handshake succeeds");
    let mut events = Vec::new();
    let read = async {
        while let Some(message) = ws.next().await {
            match message.expect("a clean stream") {
                Message::Text(text) => events.push(serde_json::from_str::<Value>(&text).unwrap()),
                Message::Close(frame) => return frame.map(|f| u16::from(f.code)),
                _ => {}
            }
        }
        None
    };
    let code = tokio::time::timeout(std::time::Duration::from_secs(60), read).await.expect("the stream ends");
    (events, code)
}

fn check_sequence(events: &[Value], id: &str) {
    assert!(!events.is_empty());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1, "in order from the first, no gaps: {events:?}");
        assert_eq!(e["job_id"], id);
    }
    assert_eq!(events[0]["type"], "queued");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "finished", "{last}");
    assert_eq!(events.iter().filter(|e| e["type"] == "finished").count(), 1);
}

#[tokio::test]
async fn a_watcher_gets_every_event_live_and_then_the_socket_closes() {
    let server = start(json!({})).await;
    let alpha = Client::new(&server, ALPHA);
    let id = alpha.submit(slow_job(5, 20, 20)).await;
    let (events, code) = read_all(&server, &id).await;
    check_sequence(&events, &id);
    assert_eq!(code, Some(1000), "a normal close after the terminal event");
    let progress: Vec<&Value> = events.iter().filter(|e| e["type"] == "progress").collect();
    assert!(progress.len() >= 20, "a progress event per step: {events:?}");
    let last = events.last().unwrap();
    assert_eq!(last["status"], "completed");
    assert_eq!(last["result_url"], format!("{}/jobs/{id}/video", server.url()));
    server.shutdown().await;
}

#[tokio::test]
async fn a_late_watcher_still_gets_everything_from_the_start() {
    let server = start(json!({})).await;
    let alpha = Client::new(&server, ALPHA);
    let id = alpha.submit(small_job("late", 21)).await;
    alpha.finish(&id).await;
    let (first, _) = read_all(&server, &id).await;
    check_sequence(&first, &id);
    let (second, _) = read_all(&server, &id).await;
    assert_eq!(first, second, "the log does not change once the job has finished");
    server.shutdown().await;
}

#[tokio::test]
async fn a_cancelled_job_ends_its_stream_with_the_cancellation() {
    let server = start(json!({})).await;
    let alpha = Client::new(&server, ALPHA);
    let id = alpha.submit(slow_job(6, 200, 50)).await;
    alpha.wait_for(&id, "running").await;
    let canceller = {
        let (alpha, id) = (Client::new(&server, ALPHA), id.clone());
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            alpha.post(&format!("/jobs/{id}/cancel"), json!({})).await.status
        })
    };
    let (events, code) = read_all(&server, &id).await;
    assert_eq!(canceller.await.unwrap(), 200);
    check_sequence(&events, &id);
    let last = events.last().unwrap();
    assert_eq!((last["state"].clone(), last["status"].clone()), (json!("cancelled"), json!("cancelled")));
    assert_eq!(code, Some(1000));
    server.shutdown().await;
}
