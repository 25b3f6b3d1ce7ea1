//! `WS /progress/{id}`: a job's events as JSON text messages, in order, from the first, ending with the terminal
//! one; then the server closes the socket.
//!
//! The engine's event log is the source (`Engine::events(id, since)`), so a client that connects late, or
//! reconnects, still gets everything from the start and nothing twice within one connection. The engine-wide
//! callback only says *that* a job has new events (a broadcast of its id); the socket then reads the log. A
//! missed or lagged notice costs nothing but a read, and a timer re-reads the log anyway, which also covers
//! events written by another process sharing the engine's state.

use crate::auth::Scope;
use crate::error::ApiError;
use crate::routes::{App, base_url, engine_call, owned_job};
use crate::status::event_json;
use axum::Extension;
use axum::extract::ws::{
    CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use vgen_core::engine::JobId;

/// How often the log is re-read without a notice.
const REREAD: Duration = Duration::from_millis(500);

pub async fn watch(
    State(app): State<Arc<App>>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Ownership first: another scope's job is 404 whether or not this is a WebSocket handshake.
    let (id, _) = owned_job(&app, &id, &scope).await?;
    let upgrade = upgrade.map_err(|r| ApiError::new(r.status(), "invalid_argument", r.body_text()))?;
    let base = base_url(&app, &headers);
    // A browser that offered its token as a subprotocol needs one chosen back: `vgen`, offered beside it.
    Ok(upgrade.protocols(["vgen"]).on_upgrade(move |socket| stream(app, id, base, socket)).into_response())
}

async fn stream(app: Arc<App>, id: JobId, base: String, mut socket: WebSocket) {
    // Subscribed before the first read, so no event can fall between the read and the wait.
    let mut notices = app.events.subscribe();
    let mut since = 0;
    loop {
        let events = match engine_call(&app, move |e| e.events(id, since)).await {
            Ok(Ok(events)) => events,
            Ok(Err(e)) => return close(socket, close_code::ERROR, &format!("{}: {}", e.code(), e.message())).await,
            Err(e) => return close(socket, close_code::ERROR, &e.message).await,
        };
        for event in events {
            since = event.seq;
            let text = event_json(&event, &base).to_string();
            if socket.send(Message::Text(text.into())).await.is_err() {
                return;
            }
            if event.kind.is_terminal() {
                return close(socket, close_code::NORMAL, "finished").await;
            }
        }
        // Wait for a notice about this job, the re-read timer, or the client going away.
        let deadline = tokio::time::sleep(REREAD);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                notice = notices.recv() => match notice {
                    Ok(job) if job != id => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return close(socket, close_code::AWAY, "the server is stopping").await,
                },
                message = socket.recv() => match message {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => continue, // pings are answered by axum; anything else is ignored
                },
                _ = &mut deadline => break,
            }
        }
    }
}

async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    // A close frame's reason has at most 123 bytes.
    let mut reason = reason.to_string();
    while reason.len() > 120 {
        reason.pop();
    }
    let frame = CloseFrame { code, reason: reason.into() };
    let _ = socket.send(Message::Close(Some(frame))).await;
    // Let the client's close reply arrive, briefly, so the close handshake completes.
    let _ =
        tokio::time::timeout(Duration::from_secs(1), async { while let Some(Ok(_)) = socket.recv().await {} }).await;
}
