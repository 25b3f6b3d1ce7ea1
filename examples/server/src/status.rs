//! A job's status as clients see it: the vocabulary of the hosted video APIs (`pending`, `completed`, progress in
//! percent, `result_url`) over the engine's [`JobStatus`].

use serde_json::{Value, json};
use vgen_core::engine::{Event, EventKind, JobId, JobState, JobStatus};

/// The client-facing name of a state.
pub fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Queued => "pending",
        JobState::Running => "running",
        JobState::Succeeded => "completed",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

/// Where a finished job's video can be downloaded.
pub fn video_url(base_url: &str, id: JobId) -> String {
    format!("{}/jobs/{id}/video", base_url.trim_end_matches('/'))
}

/// The body of `GET /jobs/{id}` (and of a webhook).
pub fn status_json(status: &JobStatus, base_url: &str) -> Value {
    let done = status.state.is_terminal();
    let eta_seconds = if done { Some(0.0) } else { status.eta_ms.map(|ms| ms as f64 / 1000.0) };
    json!({
        "job_id": status.id.to_string(),
        "status": state_name(status.state),
        "progress": percent(if status.state == JobState::Succeeded { 1.0 } else { status.progress }),
        "stage": status.stage.name(),
        "step": status.step,
        "steps": status.steps,
        "eta_seconds": eta_seconds,
        "eta_confidence": status.eta_confidence,
        "queue_position": status.queue_position,
        "attempt": status.attempt,
        "cache_hit": status.cache_hit,
        "result_url": (status.state == JobState::Succeeded).then(|| video_url(base_url, status.id)),
        "error": status.error.as_ref().map(|e| json!({"code": e.code.name(), "message": e.message, "retryable": e.retryable})),
        "submitted_at_ms": status.submitted_at_ms,
        "started_at_ms": status.started_at_ms,
        "finished_at_ms": status.finished_at_ms,
    })
}

/// One WebSocket message: the engine's event as it serialises (`type`, `seq`, `at_ms` and the kind's fields;
/// a progress event's `progress` is the engine's 0-to-1 fraction), with the job's id as clients know it. The
/// terminal event also carries the client-facing `status` and, on success, `result_url`.
pub fn event_json(event: &Event, base_url: &str) -> Value {
    let mut v =
        serde_json::to_value(event).unwrap_or_else(|e| json!({"type": "unserializable", "detail": e.to_string()}));
    v["job"] = json!(event.job.to_string());
    v["job_id"] = json!(event.job.to_string());
    if let EventKind::Finished { state, .. } = &event.kind {
        v["status"] = json!(state_name(*state));
        v["result_url"] = json!((*state == JobState::Succeeded).then(|| video_url(base_url, event.job)));
    }
    v
}

/// 0 to 100 with one decimal.
fn percent(fraction: f64) -> f64 {
    (fraction.clamp(0.0, 1.0) * 1000.0).round() / 10.0
}

/// `job-N` back to the engine's id.
pub fn parse_job_id(text: &str) -> Option<JobId> {
    let n: u64 = text.strip_prefix("job-")?.parse().ok()?;
    (n != 0 && text == format!("job-{n}")).then_some(JobId(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_nothing_else_parses() {
        assert_eq!(parse_job_id("job-42"), Some(JobId(42)));
        assert_eq!(parse_job_id(&JobId(7).to_string()), Some(JobId(7)));
        for bad in ["42", "job-", "job-0", "job-+4", "job-04", "job-1x", "JOB-1"] {
            assert_eq!(parse_job_id(bad), None, "{bad}");
        }
    }
}
