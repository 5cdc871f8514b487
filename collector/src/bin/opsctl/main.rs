//! `opsctl`: the operator CLI over the collector's admin API, on the typed
//! requests and answers of `common::api`. Human output by default, `--json`
//! for scripts (the answer as the collector sent it). Exit codes: 0 ok, 1
//! the operation failed (or `audit verify` found a problem), 2 bad usage or
//! configuration. One module per capability, as in the collector
//! (ARCHITECTURE.md); `client.rs` talks HTTP, `table.rs` prints every list.

mod access;
mod approvals;
mod audit;
mod client;
mod flags;
mod fleet;
mod killswitches;
mod table;

use clap::{Parser, Subcommand};
use client::{Client, Failure, Out};
use std::process::ExitCode;

const ENV_URL: &str = "OPSPLANE_URL";
const ENV_TOKEN: &str = "OPSPLANE_TOKEN";
const DEFAULT_URL: &str = "http://127.0.0.1:7602";

#[derive(Parser)]
#[command(name = "opsctl", version = common::VERSION, about = "Operate Opsplane: agents, flags, kill switches, audit, tokens, users")]
struct Cli {
    /// Admin API URL [env: OPSPLANE_URL, default http://127.0.0.1:7602]
    #[arg(long, global = true)]
    url: Option<String>,
    /// API token [env: OPSPLANE_TOKEN]
    #[arg(long, global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print JSON only.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enrolled agents.
    #[command(subcommand)]
    Agents(fleet::AgentsCmd),
    /// Feature flags.
    #[command(subcommand)]
    Flags(flags::FlagsCmd),
    /// Pull a kill switch (takes effect on every agent at once).
    Kill(killswitches::KillArgs),
    /// Release a kill switch.
    Revive(killswitches::KillArgs),
    /// Kill switches and how many agents applied each state.
    #[command(subcommand)]
    Killswitches(killswitches::KillswitchesCmd),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// API tokens.
    #[command(subcommand)]
    Tokens(access::TokensCmd),
    /// Console users.
    #[command(subcommand)]
    Users(access::UsersCmd),
    /// Four-eyes requests: changes waiting for a second person.
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCmd),
}

fn main() -> ExitCode {
    let cli: Cli = match common::cli::parse() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run(cli) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("error: {}", f.message());
            f.exit_code()
        }
    }
}

fn run(cli: Cli) -> Out {
    let base = cli
        .url
        .or_else(|| common::config::env_override(ENV_URL))
        .unwrap_or_else(|| DEFAULT_URL.into())
        .trim_end_matches('/')
        .to_string();
    let token = cli
        .token
        .or_else(|| common::config::env_override(ENV_TOKEN))
        .ok_or_else(|| Failure::Usage("no API token: pass --token or set OPSPLANE_TOKEN".into()))?;
    let http = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| Failure::Op(e.to_string()))?;
    let c = Client {
        base,
        token,
        http,
        json: cli.json,
    };
    match cli.cmd {
        Cmd::Agents(a) => fleet::run(&c, a),
        Cmd::Flags(f) => flags::run(&c, f),
        Cmd::Kill(k) => killswitches::kill(&c, k, true),
        Cmd::Revive(k) => killswitches::kill(&c, k, false),
        Cmd::Killswitches(k) => killswitches::run(&c, k),
        Cmd::Audit(a) => audit::run(&c, a),
        Cmd::Tokens(t) => access::tokens(&c, t),
        Cmd::Users(u) => access::users(&c, u),
        Cmd::Approvals(a) => approvals::run(&c, a),
    }
}
