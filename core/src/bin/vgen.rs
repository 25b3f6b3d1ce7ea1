//! `vgen`: the command-line face of the engine.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use vgen_core::{Device, runtime};

#[derive(Parser)]
#[command(name = "vgen", version = VERSION_LINE, about = "Native text-to-video generation on libtorch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the devices libtorch sees, and prove each one works by running a small computation on it.
    Devices {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

const VERSION_LINE: &str = concat!(env!("CARGO_PKG_VERSION"), " (libtorch ", env!("VGEN_LIBTORCH_VERSION"), ")");

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices { json } => devices(json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn devices(json: bool) -> vgen_core::Result<()> {
    let cuda = runtime::init();
    let probes = Device::all().into_iter().map(Device::probe).collect::<vgen_core::Result<Vec<_>>>()?;
    if json {
        let out = serde_json::json!({
            "vgen": runtime::VERSION,
            "libtorch": runtime::LIBTORCH_VERSION,
            "cpu_threads": runtime::cpu_threads(),
            "cuda": cuda.describe(),
            "auto": Device::auto(),
            "devices": probes,
        });
        println!("{out}");
        return Ok(());
    }
    println!("vgen {} on libtorch {}", runtime::VERSION, runtime::LIBTORCH_VERSION);
    println!("CUDA: {}", cuda.describe());
    println!("CPU threads: {}", runtime::cpu_threads());
    println!("{:<8} {:>14} {:>22}", "device", "matmul GFLOP/s", "attention max error");
    for p in &probes {
        println!("{:<8} {:>14.1} {:>22.2e}", p.device.to_string(), p.matmul_gflops, p.attention_max_error);
    }
    let auto: Vec<String> = Device::auto().iter().map(ToString::to_string).collect();
    println!("jobs run on: {} (auto)", auto.join(", "));
    Ok(())
}
