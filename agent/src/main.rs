//! `opsplane-agent`: run, check-config.

use agent::config::Config;
use clap::{Parser, Subcommand};
use common::telemetry::{init_logging, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "opsplane-agent", version = common::VERSION, about = "Opsplane agent: flags, kill switches and health beside your app")]
struct Cli {
    /// Log format: text or json.
    #[arg(
        long,
        global = true,
        default_value = "text",
        env = "OPSPLANE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file and print every problem.
    CheckConfig { file: PathBuf },
}

fn main() -> ExitCode {
    let cli: Cli = match common::cli::parse() {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(cli.log_format);
    let path = match &cli.cmd {
        Cmd::Run { config } => config,
        Cmd::CheckConfig { file } => file,
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Cmd::CheckConfig { file } = &cli.cmd {
        println!("{}: ok", file.display());
        return ExitCode::SUCCESS;
    }
    // At most 2 workers, and never more than the CPUs this process may run on
    // (affinity and cgroup quota): two workers time-sliced on one core add
    // scheduler delay to the tail latency and a thread's worth of memory.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(2));
    // the start/stop sequence shared with the collector: docs/lifecycle.md
    common::lifecycle::run(
        common::lifecycle::Options {
            worker_threads: Some(workers),
            grace: agent::SHUTDOWN_GRACE,
        },
        || agent::start(config),
    )
}
