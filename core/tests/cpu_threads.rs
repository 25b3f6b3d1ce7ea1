//! `cpu_threads` leaves a host its cores: with it at 1, a job on the CPU keeps the process to about one core, where
//! libtorch's default spreads it over every core. Measured as the process's CPU time over the job's wall time, on
//! the default model. Its own test binary: libtorch's thread settings are per process.

use std::time::Instant;
use vgen_core::{Engine, EngineConfig, Request};

/// The process's CPU time (user + system) in seconds, from /proc/self/stat (clock ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// The threads the jobs ran with (from their metadata), and the cores the process used while the engine made two
/// clips: CPU seconds over wall seconds.
fn cores_used(config: &str) -> (u32, f64) {
    let engine = Engine::new(EngineConfig::from_json(config).unwrap()).unwrap();
    // A warm-up job loads the model; the measured ones only compute.
    let request = |seed| Request { prompt: "a red circle moving right".into(), seed: Some(seed), ..Default::default() };
    let warm = engine.submit(request(1)).unwrap();
    engine.wait(warm, None).unwrap();
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let mut threads = Vec::new();
    for seed in [2, 3] {
        let job = engine.submit(request(seed)).unwrap();
        engine.wait(job, None).unwrap();
        threads.push(engine.result(job).unwrap().metadata.cpu_threads);
    }
    assert_eq!(threads[0], threads[1]);
    (threads[0], (cpu_seconds() - cpu) / wall.elapsed().as_secs_f64())
}

#[test]
fn cpu_threads_keeps_inference_to_the_cores_it_is_given() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (default_threads, default) = cores_used(r#"{"devices": ["cpu"]}"#);
    let (capped_threads, capped) = cores_used(r#"{"devices": ["cpu"], "cpu_threads": 1}"#);
    eprintln!(
        "{cores} cores: libtorch's default ran {default_threads} threads and used {default:.2} cores, \
         cpu_threads 1 ran {capped_threads} and used {capped:.2}"
    );
    assert_eq!(default_threads as usize, cores, "libtorch's default is a thread per core");
    assert_eq!(capped_threads, 1, "the jobs ran with the one thread asked for");
    // How many cores the default keeps busy depends on what else runs; the cap must hold whatever runs.
    assert!(capped < 1.25, "with cpu_threads 1 the process used {capped:.2} cores");
    let refused = Engine::new(EngineConfig::from_json(r#"{"devices": ["cpu"], "cpu_threads": 0}"#).unwrap());
    assert!(refused.err().unwrap().message().contains("cpu_threads must be 1 to 1024"));
}
