//! `vgen-server --config server.json`: serves vgen over HTTP until SIGTERM or SIGINT, then stops cleanly.

use std::io::Write;
use std::process::ExitCode;
use vgen_server::config::ServerConfig;

const USAGE: &str = "usage: vgen-server --config FILE

Serves the vgen engine over HTTP and WebSocket (see examples/server/README.md). The first line on stdout says
where it listens (\"vgen-server listening on http://127.0.0.1:8080\"). SIGTERM or SIGINT stops it cleanly:
no new jobs, running ones get the engine's shutdown_timeout_ms, then it exits 0.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = match args.as_slice() {
        [flag, path] if flag == "--config" => path.clone(),
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        [flag] if flag == "--version" => {
            println!("vgen-server {} (vgen {})", env!("CARGO_PKG_VERSION"), vgen_core::runtime::VERSION);
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match ServerConfig::from_file(std::path::Path::new(&path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vgen-server: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vgen-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ready = |line: String| {
        println!("{line}");
        let _ = std::io::stdout().flush();
    };
    match runtime.block_on(vgen_server::run(config, stop_signal(), ready)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vgen-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        eprintln!("vgen-server: cannot install signal handlers; stop it with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("vgen-server: stopping (no new jobs; running ones may finish)");
}
