//! `opsplane-collector`: init, run, check-config.

use clap::{Parser, Subcommand};
use collector::config::Settings;
use common::lifecycle;
use common::telemetry::{init_logging, LogFormat};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "opsplane-collector", version = common::VERSION, about = "Opsplane collector: central state, admin API and audit log")]
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
    /// Create the database, the admin user (password printed once) and an admin API token.
    Init {
        #[arg(long)]
        data_dir: PathBuf,
        /// Write the admin API token to this file (mode 0600) instead of printing it.
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
    },
    /// Serve the ingest, admin and status listeners.
    Run {
        #[arg(
            long,
            conflicts_with = "data_dir",
            required_unless_present = "data_dir"
        )]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
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
    match cli.cmd {
        Cmd::CheckConfig { file } => match Settings::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Cmd::Init {
            data_dir,
            admin_token_file,
        } => match collector::init::init(&data_dir) {
            Ok(i) => {
                println!("initialised {}", data_dir.display());
                println!("admin user: {}", i.admin_user);
                println!("admin password (shown once): {}", i.admin_password);
                match admin_token_file {
                    Some(f) => match write_secret(&f, &i.admin_token) {
                        Ok(()) => println!("admin API token written to {}", f.display()),
                        Err(e) => {
                            eprintln!("error: cannot write {}: {e}", f.display());
                            return ExitCode::from(1);
                        }
                    },
                    None => {
                        println!("admin API token (shown once):");
                        println!("{}", i.admin_token);
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(collector::store::exit_code(&e))
            }
        },
        Cmd::Run { config, data_dir } => {
            let settings = match (config, data_dir) {
                (Some(f), _) => Settings::load(&f),
                (None, Some(d)) => Settings::with_data_dir(&d),
                (None, None) => unreachable!("clap requires one"),
            };
            let settings = match settings {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            // the start/stop sequence shared with the agent: docs/lifecycle.md
            lifecycle::run(
                lifecycle::Options {
                    worker_threads: None,
                    grace: collector::SHUTDOWN_GRACE,
                },
                || async {
                    collector::start(settings).await.map(Serving).map_err(|e| {
                        // a database newer than this binary is a usage error (exit 2)
                        let code = collector::store::exit_code(&e);
                        if code != 1 {
                            eprintln!("error: {e:#}");
                            std::process::exit(code.into());
                        }
                        e
                    })
                },
            )
        }
    }
}

/// The collector as the shared start/stop sequence drives it: it has no
/// background work that outlives its listeners (streams and housekeeping
/// end with them), so the drain waits for the requests in flight, then
/// closes the listeners.
struct Serving(collector::Running);

impl lifecycle::Service for Serving {
    fn listeners(&self) -> Vec<(&'static str, std::net::SocketAddr)> {
        vec![
            ("ingest", self.0.ingest_addr),
            ("admin", self.0.admin_addr),
            ("status", self.0.status_addr),
        ]
    }

    fn gate(&self) -> &lifecycle::Gate {
        &self.0.gate
    }

    fn stop_work(&self) {}

    fn work_done(&self) -> lifecycle::BoxFuture<()> {
        Box::pin(std::future::ready(()))
    }

    fn finish(self) -> lifecycle::BoxFuture<()> {
        self.0.shutdown.cancel();
        Box::pin(async move {
            if let Err(e) = self.0.wait().await {
                tracing::error!(error = %e, "collector did not stop cleanly");
            }
        })
    }
}

fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{secret}")?;
    f.sync_all()
}
