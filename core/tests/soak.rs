//! Soak and chaos: many jobs on several workers with injected transient faults, out-of-memory, panics, random
//! cancels and short deadlines; then many real generations in one engine. Prints its figures and asserts them.
//!
//! `make test` runs the short form (2,000 chaos jobs, 120 generations). `make soak` runs the long one: 10,000
//! chaos jobs and 1,000 generations (`VGEN_SOAK_JOBS`, `VGEN_SOAK_GENERATIONS`).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vgen_core::engine::{BreakerConfig, EngineConfig, EventKind, Request, RetryPolicy};
use vgen_core::models::faulty::{FaultRates, Faulty};
use vgen_core::models::{Models, noop::NoOp, testcard::TestCard};
use vgen_core::{Device, Engine, JobId, JobState};

/// A setting of the soak from the environment, or `default` when it is unset. A value that does not parse stops
/// the test: a mistyped bound must not quietly become the default.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Err(_) => default,
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid {}", std::any::type_name::<T>())),
    }
}

/// The threads of this process named `vgen-…`, by id.
fn engine_threads() -> std::collections::HashSet<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
            name.starts_with("vgen-").then(|| t.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// The `vgen-…` threads that were not there before the engine started (`before`), once they have had up to 5 s to
/// wind down.
///
/// Linux threads take their creator's name, so a thread that a library starts from inside an engine worker is
/// named like the worker. Some exit just after the worker (the OpenMP team of a worker that ran libtorch ops); some
/// live as long as the process (a pool the library keeps once it exists). The second kind, started by an earlier
/// test's engine in this process, is in `before` and is not this engine's.
fn engine_threads_after_shutdown(before: &std::collections::HashSet<String>) -> usize {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let n = engine_threads().difference(before).count();
        if n == 0 || Instant::now() >= until {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

/// The resident set once glibc has handed back the free pages it holds (`malloc_trim`): what is left is memory in
/// use, so arena fragmentation, which moves RSS by several percent from run to run, does not read as a leak.
fn settled_rss_bytes() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own heaps; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
    rss_bytes()
}

/// glibc's `M_ARENA_MAX`, as `MALLOC_ARENA_MAX` sets it at start-up: threads started after this share at most
/// `arenas` malloc arenas (more may exist already; new threads then take turns on them).
fn cap_malloc_arenas(arenas: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; no pointer is involved.
    unsafe {
        assert_eq!(libc::mallopt(libc::M_ARENA_MAX, arenas), 1, "mallopt(M_ARENA_MAX) refused");
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
}

/// The two tests run one at a time: each counts the engine threads and the memory of the whole process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Injected panics are expected by the hundred here; report any other panic as usual.
fn quiet_injected_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info.payload().downcast_ref::<&str>().is_some_and(|m| m.contains("injected"))
            || info.payload().downcast_ref::<String>().is_some_and(|m| m.contains("injected"));
        if !injected {
            default(info);
        }
    }));
}

/// Counts its drops: the finalizer of a per-job callback.
struct Finalizer(Arc<AtomicU64>);

impl Drop for Finalizer {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn chaos_every_job_ends_exactly_once_and_nothing_is_left_behind() {
    let _alone = ONE_AT_A_TIME.lock();
    quiet_injected_panics();
    let jobs = env_or("VGEN_SOAK_JOBS", 2_000u64);
    let rates = FaultRates { fail: 0.20, panic: 0.01, oom: 0.05, invalid: 0.0 };
    let mut models = Models::default();
    models.insert(Arc::new(Faulty::random(Arc::new(NoOp::new()), rates).named("chaos-noop")));
    models.insert(Arc::new(Faulty::random(Arc::new(TestCard::new()), rates).named("chaos-testcard")));
    let config = EngineConfig {
        devices: vec![Device::Cpu],
        workers_per_device: 4,
        queue_capacity: 100_000,
        retry: RetryPolicy { max_attempts: 3, base_delay_ms: 1, max_delay_ms: 5 },
        // Faults are per job, not the device's: keep the breaker from taking the only device away for long.
        breaker: BreakerConfig { failure_threshold: 50, cooldown_ms: 5 },
        shutdown_timeout_ms: 5_000,
        ..EngineConfig::default()
    };
    let rss_before = rss_bytes();
    let threads_before = engine_threads();
    let engine = Arc::new(Engine::with_models(config, models).unwrap());
    // Terminal events seen by the engine-wide callback, and by each job's own callback.
    let engine_terminals: Arc<Mutex<HashMap<JobId, u32>>> = Arc::default();
    let job_terminals: Arc<Mutex<HashMap<JobId, u32>>> = Arc::default();
    let finalized = Arc::new(AtomicU64::new(0));
    let t = engine_terminals.clone();
    engine.on_event(Arc::new(move |ev| {
        if let EventKind::Finished { .. } = ev.kind {
            *t.lock().entry(ev.job).or_default() += 1;
        }
    }));

    let start = Instant::now();
    let (cancel_tx, cancel_rx) = crossbeam_channel::unbounded::<JobId>();
    let canceller = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            for id in cancel_rx {
                let _ = engine.cancel(id);
            }
        })
    };
    let mut ids = Vec::new();
    for i in 0..jobs {
        let model = if i % 20 == 0 { "chaos-testcard" } else { "chaos-noop" };
        let request = Request {
            model: Some(model.into()),
            seed: Some(i),
            priority: (i % 7) as i32 - 3,
            num_frames: Some(if model == "chaos-testcard" { 5 } else { 1 }),
            width: Some(16),
            height: Some(16),
            steps: Some(3),
            deadline_ms: (i % 11 == 0).then_some(1 + i % 5),
            ..Request::new(format!("chaos {i}"))
        };
        let seen = job_terminals.clone();
        let finalizer = Finalizer(finalized.clone());
        let callback: vgen_core::engine::Callback = Arc::new(move |ev| {
            let _keep = &finalizer;
            if let EventKind::Finished { .. } = ev.kind {
                *seen.lock().entry(ev.job).or_default() += 1;
            }
        });
        let id = engine.submit_with(request, Some(callback)).unwrap_or_else(|e| panic!("submit {i} failed: {e}"));
        if i % 10 == 3 {
            cancel_tx.send(id).unwrap();
        }
        ids.push(id);
    }
    drop(cancel_tx);
    canceller.join().unwrap();
    let mut states: HashMap<JobState, u64> = HashMap::new();
    for id in &ids {
        let status = engine.wait(*id, Some(Duration::from_secs(120))).expect("no job may hang");
        *states.entry(status.state).or_default() += 1;
    }
    let elapsed = start.elapsed();
    let m = engine.metrics();
    let engine = Arc::try_unwrap(engine).ok().expect("the test holds the only engine reference");
    drop(engine);
    let threads_after = engine_threads_after_shutdown(&threads_before);
    let rss_after = rss_bytes();

    let count = |map: &HashMap<JobId, u32>| {
        let duplicate = map.values().filter(|n| **n > 1).count();
        let missing = ids.iter().filter(|id| !map.contains_key(id)).count();
        (duplicate, missing)
    };
    let (engine_duplicate, engine_missing) = count(&engine_terminals.lock());
    let (job_duplicate, job_missing) = count(&job_terminals.lock());
    let unfinalized = jobs - finalized.load(Ordering::SeqCst);
    let state = |s| states.get(&s).copied().unwrap_or(0);
    eprintln!(
        "soak: chaos, {jobs} jobs on 4 workers in {:.1} s ({:.0} jobs/s)",
        elapsed.as_secs_f64(),
        jobs as f64 / elapsed.as_secs_f64()
    );
    eprintln!(
        "soak:   ended succeeded {} · failed {} · cancelled {}; attempts retried {}",
        state(JobState::Succeeded),
        state(JobState::Failed),
        state(JobState::Cancelled),
        m.retries
    );
    eprintln!(
        "soak:   terminal events duplicate {} · missing {} (engine callback), duplicate {} · missing {} (job callbacks)",
        engine_duplicate, engine_missing, job_duplicate, job_missing
    );
    eprintln!("soak:   callbacks not finalised {unfinalized}; engine threads alive after shutdown {threads_after}");
    eprintln!(
        "soak:   RSS before {:.1} MiB, after {:.1} MiB",
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );

    assert_eq!(state(JobState::Succeeded) + state(JobState::Failed) + state(JobState::Cancelled), jobs);
    assert!(state(JobState::Succeeded) > jobs / 2, "most jobs survive their faults: {states:?}");
    assert!(m.retries > 0 && state(JobState::Failed) > 0 && state(JobState::Cancelled) > 0, "{m:?}");
    assert_eq!((engine_duplicate, engine_missing, job_duplicate, job_missing), (0, 0, 0, 0));
    assert_eq!(unfinalized, 0, "every callback's finalizer ran");
    assert_eq!(threads_after, 0, "engine threads outlived the engine");
}

/// Real generations in one engine, one after another, the way a long-running host uses it (take the video, then
/// release the job; a result cache with a small budget, so that it is full after the warm-up): memory must level
/// off, not grow with the jobs served. The warm-up is the first sixth of the jobs.
///
/// What growth there is belongs to glibc's malloc, not to vgen: each worker thread allocates from its own arena,
/// and the arenas fragment as the workers take turns. Measured (release, `shapes-tiny`, 300 generations, RSS from
/// job 50 to job 300): +3.3% as the process starts, +0.13% with `MALLOC_ARENA_MAX=2`, -1.4% with 1, and no slower.
/// Without a cap the growth wandered past 5% under load (+5.30% in one CI run), so the test caps the arenas at two
/// itself (`mallopt`, before the engine starts its workers) whatever the environment. Even capped, a CI run read
/// +8.59% (2026-12-02), so both readings are taken after `malloc_trim`, which returns the arenas' free pages and
/// leaves a leak's live allocations counted; the bound stays loose
/// (`VGEN_SOAK_MAX_GROWTH`, default 5%) and `make soak` asks for 1%, which a real leak of even a few KiB a job would
/// break.
#[test]
fn many_generations_in_one_engine_do_not_grow_memory() {
    let _alone = ONE_AT_A_TIME.lock();
    cap_malloc_arenas(2);
    let generations = env_or("VGEN_SOAK_GENERATIONS", 120u64);
    let warm = (generations / 6).max(1);
    let max_growth = env_or("VGEN_SOAK_MAX_GROWTH", 0.05f64);
    let (models, _) = Models::discover_in(&[std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")]);
    let model = models.default_name().unwrap().to_string();
    let config = EngineConfig {
        devices: vec![Device::Cpu],
        // 1 MiB: five 64×64, 17-frame videos, so the cache is full long before the warm-up ends.
        cache: vgen_core::engine::CacheConfig { max_bytes: 1 << 20, ..Default::default() },
        ..Default::default()
    };
    let engine = Engine::with_models(config, models).unwrap();
    let mut rss_warm = 0;
    let start = Instant::now();
    for i in 0..generations {
        // A new seed each time, so that nothing is served from the cache.
        let id = engine.submit(Request { seed: Some(i), ..Request::new("a red circle moving right") }).unwrap();
        let s = engine.wait(id, Some(Duration::from_secs(120))).unwrap();
        assert_eq!(s.state, JobState::Succeeded, "{:?}", s.error);
        assert!(!s.cache_hit);
        assert!(engine.result(id).unwrap().frames.num_frames > 0);
        engine.release(id).unwrap();
        if i + 1 == warm {
            rss_warm = settled_rss_bytes();
        }
    }
    let rss_end = settled_rss_bytes();
    let growth = rss_end as f64 / rss_warm as f64 - 1.0;
    eprintln!(
        "soak: {generations} generations of {model} in {:.1} s; RSS after job {warm} {:.1} MiB, after job {generations} {:.1} MiB ({:+.2}%)",
        start.elapsed().as_secs_f64(),
        rss_warm as f64 / 1048576.0,
        rss_end as f64 / 1048576.0,
        growth * 100.0
    );
    assert!(
        growth < max_growth,
        "RSS grew {:.2}% from job {warm} to job {generations} (bound {:.2}%)",
        growth * 100.0,
        max_growth * 100.0
    );
}
