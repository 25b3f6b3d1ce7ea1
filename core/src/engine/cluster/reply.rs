//! What a worker reads back: the job entries in a stream reply, and a mirrored job's status moved on by the events
//! of its local run.

use crate::engine::event::{Event, EventKind};
use crate::engine::job::{JobId, JobState, JobStatus};

/// Moves a mirrored job's status on by one event of its local run.
pub(super) fn advance_status(status: &mut JobStatus, event: &Event) {
    match &event.kind {
        EventKind::Started { attempt, .. } => {
            status.state = JobState::Running;
            status.attempt = *attempt;
            status.started_at_ms.get_or_insert(event.at_ms);
        }
        EventKind::Stage { stage } => status.stage = *stage,
        EventKind::Progress { step, steps, progress, eta_ms } => {
            status.step = *step;
            status.steps = *steps;
            status.progress = *progress;
            status.eta_ms = *eta_ms;
        }
        EventKind::Frames { ready, .. } => status.frames_ready = *ready,
        EventKind::RetryScheduled { attempt, delay_ms, .. } => {
            status.state = JobState::Queued;
            status.attempt = *attempt;
            status.eta_ms = status.eta_ms.map(|e| e + delay_ms);
        }
        EventKind::Preview { .. } => status.preview_seq += 1,
        EventKind::Queued { .. }
        | EventKind::Warning { .. }
        | EventKind::Quality { .. }
        | EventKind::Finished { .. } => {}
    }
}

/// `(stream, entry id, job id)` from an XREADGROUP reply over several streams (RESP2: an array of
/// `[stream, entries]` pairs, in the order the streams were named). Entries without a job (a wake stream's) are
/// skipped.
pub(super) fn stream_entries(reply: &redis::Value) -> Vec<(String, String, JobId)> {
    use redis::Value;
    let Value::Array(streams) = reply else { return Vec::new() };
    let mut out = Vec::new();
    for pair in streams {
        if let Value::Array(pair) = pair {
            if let [Value::BulkString(name), items] = pair.as_slice() {
                let name = String::from_utf8_lossy(name).into_owned();
                out.extend(entries(items).into_iter().map(|(entry, job)| (name.clone(), entry, job)));
            }
        }
    }
    out
}

/// `(entry id, job id)` pairs from an XREADGROUP or XAUTOCLAIM reply. Entries deleted since they were read (their
/// job ended) come back without fields and are skipped.
pub(super) fn entries(reply: &redis::Value) -> Vec<(String, JobId)> {
    use redis::Value;
    fn text(v: &Value) -> Option<String> {
        match v {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    }
    fn walk(v: &Value, out: &mut Vec<(String, JobId)>) {
        let Value::Array(items) = v else { return };
        if let [id, Value::Array(fields)] = items.as_slice() {
            if let Some(id) = text(id).filter(|s| s.contains('-') && s.chars().all(|c| c.is_ascii_digit() || c == '-'))
            {
                let job = fields
                    .chunks(2)
                    .find(|kv| kv.first().and_then(text).as_deref() == Some("job"))
                    .and_then(|kv| kv.get(1).and_then(text))
                    .and_then(|s| s.parse().ok());
                if let Some(job) = job {
                    out.push((id, JobId(job)));
                }
                return;
            }
        }
        for item in items {
            walk(item, out);
        }
    }
    let mut out = Vec::new();
    walk(reply, &mut out);
    out
}
