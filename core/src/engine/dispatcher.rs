//! The dispatcher thread: the one place host callbacks run.
//!
//! Workers and API calls queue `(callbacks, event)` pairs after releasing every lock; this thread calls them in
//! order. A slow callback therefore delays other callbacks but never inference, and a panicking one is caught and
//! logged. Dropping the last reference to a callback here is what runs a C host's finalizer, on this thread.
//! The queue is a [`Mailbox`]: when the callbacks fall behind a job, its progress and previews are coalesced to the
//! latest of each, and nothing else is ever dropped (see `mailbox.rs`).

use super::cell::Outbox;
use super::event::{Callback, Event, EventKind};
use super::job::JobId;
use super::mailbox::{self, Mailbox};
use crate::error::Result;
use std::sync::Arc;
use std::thread::JoinHandle;

/// One event and the callbacks it goes to.
pub(crate) struct Delivery {
    callbacks: Vec<Callback>,
    event: Event,
}

impl mailbox::Item for Delivery {
    fn job(&self) -> JobId {
        self.event.job
    }
    fn kind(&self) -> &EventKind {
        &self.event.kind
    }
}

pub(crate) type Dispatcher = Arc<Mailbox<Delivery>>;

/// Starts the dispatcher thread; it runs until the mailbox is closed and emptied.
pub(crate) fn spawn() -> Result<(Dispatcher, JoinHandle<()>)> {
    let mailbox: Dispatcher = Arc::default();
    let inbox = mailbox.clone();
    let handle = super::start_thread("vgen-dispatcher", move || run(&inbox))?;
    Ok((mailbox, handle))
}

fn run(inbox: &Mailbox<Delivery>) {
    while let Some(Delivery { callbacks, event }) = inbox.pop(None) {
        for callback in callbacks {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(&event)));
            if outcome.is_err() {
                tracing::error!(job = %event.job, seq = event.seq, "an event callback panicked; ignored");
            }
        }
    }
}

pub(crate) fn send(dispatcher: &Mailbox<Delivery>, outbox: Outbox) {
    for (callbacks, event) in outbox {
        dispatcher.push(Delivery { callbacks, event });
    }
}
