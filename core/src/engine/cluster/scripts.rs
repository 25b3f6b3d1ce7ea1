//! The Lua scripts that change a job's shared state. Each runs atomically in Redis, so the invariants below hold
//! whatever the nodes do concurrently, crash or retry:
//!
//! - A job hash has a `terminal` field once the job has ended, and it is set only by `FINISH` or `CANCEL`, each of
//!   which first checks that it is absent: **a job ends exactly once**, even when it was reclaimed from a worker
//!   that was merely slow and both workers finish it.
//! - `lease` names the one worker run that may report on the job. `START` takes it; a reclaim takes it over; `UPDATE`
//!   and `FINISH` do nothing for a caller that no longer holds it, so a worker that lost its lease cannot move the
//!   job's progress or end it.
//! - The job's events are numbered by the hash's `seq` counter inside the same script that appends them, so the
//!   log has no gaps and no duplicates. An event arrives as JSON with `"seq":0,` as a placeholder (`Event`
//!   serialises `job` then `seq`, so the first match is the event's own).
//! - A stream entry is acknowledged and deleted when its job ends or is found ended, so the streams hold exactly
//!   the jobs not yet finished. The backlog counter moves with them: `SUBMIT` adds one with each entry, and every
//!   `XDEL` takes off what it deleted, so it always equals the streams' total length.
//! - Every key a script touches is in its `KEYS`, built by `Keys` with the namespace's hash tag, so a script runs
//!   on Redis Cluster: all its keys are in one slot. A script never builds a key name, and an optional key is
//!   passed as a placeholder in the same slot with a flag in `ARGV` (never as '', which hashes elsewhere).

use redis::Script;
use std::sync::LazyLock;

/// KEYS: idempotency key (a placeholder when the request has none), job hash, event list, stream, priorities zset,
/// backlog counter.
/// ARGV: job id, request JSON, status JSON, queued event JSON, priority, capacity, idempotency TTL ms, '1' when the
/// request has an idempotency key.
/// Returns {"existing", id} | {"full", backlog} | {"queued", entry id}.
pub(crate) static SUBMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local keyed = ARGV[8] == '1'
if keyed then
  local existing = redis.call('GET', KEYS[1])
  if existing then return {'existing', existing} end
end
local backlog = tonumber(redis.call('GET', KEYS[6]) or '0')
if backlog >= tonumber(ARGV[6]) then return {'full', tostring(backlog)} end
local event = string.gsub(ARGV[4], '"seq":0,', '"seq":1,', 1)
redis.call('RPUSH', KEYS[3], event)
local entry = redis.call('XADD', KEYS[4], '*', 'job', ARGV[1])
redis.call('INCR', KEYS[6])
redis.pcall('XGROUP', 'CREATE', KEYS[4], 'workers', '0')
redis.call('HSET', KEYS[2], 'request', ARGV[2], 'status', ARGV[3], 'seq', 1, 'entry', entry, 'stream', KEYS[4])
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[5])
if keyed then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[7]) end
return {'queued', entry}
"#,
    )
});

/// A worker takes a job it read from a stream. KEYS: job hash, the stream, backlog counter. ARGV: lease token, entry
/// id. Returns {"run", request, status} | {"ended"} (its entry is then acknowledged and deleted).
pub(crate) static START: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then
  redis.call('XACK', KEYS[2], 'workers', ARGV[2])
  redis.call('DECRBY', KEYS[3], redis.call('XDEL', KEYS[2], ARGV[2]))
  return {'ended'}
end
redis.call('HSET', KEYS[1], 'lease', ARGV[1])
return {'run', redis.call('HGET', KEYS[1], 'request'), status}
"#,
    )
});

/// Progress from the lease holder. KEYS: job hash, event list. ARGV: lease token, status JSON, event JSON ('' for
/// a status change alone). Returns 1, or 0 when the lease is gone or the job has ended (the worker should stop).
pub(crate) static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] or redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then
  return 0
end
if ARGV[3] ~= '' then
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('RPUSH', KEYS[2], (string.gsub(ARGV[3], '"seq":0,', '"seq":' .. seq .. ',', 1)))
end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
return 1
"#,
    )
});

/// The lease holder ends the job. KEYS: job hash, event list, cache key (a placeholder unless ARGV[9] is '1'),
/// flight key, the job's stream, backlog counter.
/// ARGV: lease token, status JSON, finished event JSON, state name, TTL ms, result path ('' for none), job id, entry
/// id, '1' to cache the result.
/// Returns 1 when this call ended the job, 0 when it had ended already or the lease is gone. Either way a holder's
/// stream entry is acknowledged and deleted, and its flight released.
pub(crate) static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
redis.call('XACK', KEYS[5], 'workers', ARGV[8])
redis.call('DECRBY', KEYS[6], redis.call('XDEL', KEYS[5], ARGV[8]))
redis.call('HDEL', KEYS[1], 'lease')
if redis.call('GET', KEYS[4]) == ARGV[7] then redis.call('DEL', KEYS[4]) end
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return 0 end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('RPUSH', KEYS[2], (string.gsub(ARGV[3], '"seq":0,', '"seq":' .. seq .. ',', 1)))
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'terminal', ARGV[4])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'result', ARGV[6])
  if ARGV[9] == '1' then redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[5]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
"#,
    )
});

/// Any node cancels a job. KEYS: job hash, event list, the job's stream, backlog counter (the caller reads the
/// stream and entry from the hash first: they never change). ARGV: status JSON, finished event JSON, TTL ms, entry
/// id. Returns 1 when this call ended it, 0 when it had already ended, -1 when there is no such job. A queued
/// job's entry is deleted at once; a running one's worker sees `terminal` at its next check and stops.
pub(crate) static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return 0 end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('RPUSH', KEYS[2], (string.gsub(ARGV[2], '"seq":0,', '"seq":' .. seq .. ',', 1)))
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'terminal', 'cancelled')
if not redis.call('HGET', KEYS[1], 'lease') then
  redis.call('XACK', KEYS[3], 'workers', ARGV[4])
  redis.call('DECRBY', KEYS[4], redis.call('XDEL', KEYS[3], ARGV[4]))
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"#,
    )
});

/// A worker gives a job back without ending it (it is shutting down): KEYS: job hash. ARGV: lease token.
/// The entry's idle time is then raised by the caller so that any worker reclaims it at once.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'lease')
return 1
"#,
    )
});
