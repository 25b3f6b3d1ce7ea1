//! The engine's own overhead, with the `noop` model (it does no work), each beside a baseline measured in the
//! same run: the cheapest primitive that does the same job.
//!
//! - `poll` against locking a mutex and cloning a status struct (what any poll must do at least);
//! - submit-to-start against handing a message to an idle thread over a crossbeam channel and waking it;
//! - jobs/s through submit and complete against the same count of messages to a worker thread and back.
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::time::{Duration, Instant};
use vgen_core::engine::{CacheConfig, EngineConfig, JobState, Request};
use vgen_core::{Device, Engine};

fn engine(workers: usize) -> Engine {
    Engine::new(EngineConfig {
        devices: vec![Device::Cpu],
        workers_per_device: workers,
        queue_capacity: 1 << 20,
        cache: CacheConfig { enabled: false, ..CacheConfig::default() },
        ..EngineConfig::default()
    })
    .unwrap()
}

fn noop(seed: u64) -> Request {
    Request { model: Some("noop".into()), seed: Some(seed), ..Request::new("bench") }
}

fn poll(c: &mut Criterion) {
    let e = engine(1);
    let id = e.submit(noop(0)).unwrap();
    e.wait(id, None).unwrap();
    let status = parking_lot::Mutex::new(e.poll(id).unwrap());
    let mut g = c.benchmark_group("poll");
    g.bench_function("baseline_mutex_clone", |b| b.iter(|| status.lock().clone()));
    g.bench_function("engine_poll", |b| b.iter(|| e.poll(id).unwrap()));
    g.finish();
}

fn submit_to_start(c: &mut Criterion) {
    let mut g = c.benchmark_group("submit_to_start");
    g.sample_size(30);
    let (tx, rx) = crossbeam_channel::bounded::<Instant>(1);
    let (back_tx, back_rx) = crossbeam_channel::bounded::<Duration>(1);
    let helper = std::thread::spawn(move || {
        for sent in rx {
            back_tx.send(sent.elapsed()).unwrap();
        }
    });
    g.bench_function("baseline_channel_wakeup", |b| {
        b.iter_custom(|n| {
            (0..n)
                .map(|_| {
                    tx.send(Instant::now()).unwrap();
                    back_rx.recv().unwrap()
                })
                .sum()
        })
    });
    drop(tx);
    helper.join().unwrap();
    let e = engine(1);
    let mut seed = 0;
    g.bench_function("engine_idle_worker", |b| {
        b.iter_custom(|n| {
            let mut total = Duration::ZERO;
            for _ in 0..n {
                seed += 1;
                let t = Instant::now();
                let id = e.submit(noop(seed)).unwrap();
                // Yield between polls: on a 2-core machine a poller that spins without yielding holds the core the
                // worker was woken on, and the scheduler lets it run ~1 ms before the worker gets a turn.
                while e.poll(id).unwrap().state == JobState::Queued {
                    std::thread::yield_now();
                }
                total += t.elapsed();
                e.wait(id, None).unwrap();
                e.release(id).unwrap();
            }
            total
        })
    });
    g.finish();
}

fn throughput(c: &mut Criterion) {
    const N: u64 = 10_000;
    let mut g = c.benchmark_group("jobs_per_second");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N));
    g.bench_with_input(BenchmarkId::new("baseline_channel_roundtrip", N), &N, |b, &n| {
        b.iter(|| {
            let (tx, rx) = crossbeam_channel::unbounded::<u64>();
            let (dtx, drx) = crossbeam_channel::unbounded::<u64>();
            let worker = std::thread::spawn(move || {
                for x in rx {
                    dtx.send(x).unwrap();
                }
            });
            for i in 0..n {
                tx.send(i).unwrap();
            }
            drop(tx);
            assert_eq!(drx.iter().count() as u64, n);
            worker.join().unwrap();
        })
    });
    let e = engine(2);
    let mut seed = 1 << 40;
    g.bench_with_input(BenchmarkId::new("engine_noop_jobs", N), &N, |b, &n| {
        b.iter(|| {
            let ids: Vec<_> = (0..n)
                .map(|_| {
                    seed += 1;
                    e.submit(noop(seed)).unwrap()
                })
                .collect();
            for id in ids {
                e.wait(id, None).unwrap();
                e.release(id).unwrap();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, poll, submit_to_start, throughput);
criterion_main!(benches);
