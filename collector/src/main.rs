//! `opsplane-collector`: init, run, check-config.

use clap::{Parser, Subcommand};
use collector::config::Settings;
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
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(serve(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(collector::store::exit_code(&e))
                }
            }
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let running = collector::start(settings).await?;
    let token = running.shutdown.clone();
    tokio::spawn(async move {
        common::cli::shutdown_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    running.wait().await
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
