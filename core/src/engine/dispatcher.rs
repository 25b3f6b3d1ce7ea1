//! The dispatcher thread: the one place host callbacks run.
//!
//! Workers and API calls queue `(callbacks, event)` pairs after releasing every lock; this thread calls them in
//! order. A slow callback therefore delays other callbacks but never inference, and a panicking one is caught and
//! logged. Dropping the last reference to a callback here is what runs a C host's finalizer, on this thread.

use super::cell::Outbox;
use super::event::{Callback, Event};
use crossbeam_channel::{Receiver, Sender, unbounded};
use std::thread::JoinHandle;

pub(crate) enum Message {
    Deliver(Vec<Callback>, Event),
    Stop,
}

pub(crate) fn spawn() -> (Sender<Message>, JoinHandle<()>) {
    let (tx, rx) = unbounded();
    let handle = std::thread::Builder::new()
        .name("vgen-dispatcher".into())
        .spawn(move || run(rx))
        .expect("spawn the dispatcher thread");
    (tx, handle)
}

fn run(rx: Receiver<Message>) {
    while let Ok(message) = rx.recv() {
        match message {
            Message::Deliver(callbacks, event) => {
                for callback in callbacks {
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(&event)));
                    if outcome.is_err() {
                        tracing::error!(job = %event.job, seq = event.seq, "an event callback panicked; ignored");
                    }
                }
            }
            Message::Stop => break,
        }
    }
}

pub(crate) fn send(tx: &Sender<Message>, outbox: Outbox) {
    for (callbacks, event) in outbox {
        // The receiver lives until the engine is dropped, after every sender is done.
        let _ = tx.send(Message::Deliver(callbacks, event));
    }
}
