//! `opsctl kill`, `opsctl revive` (emergency actions: never wait for an
//! approval) and `opsctl killswitches` (list with how many agents applied
//! each state, declare one).

use crate::client::{or_dash, q, Client, Out};
use crate::table::Table;
use clap::{Args, Subcommand};
use common::api::killswitches::{
    DeclareRequest, Declared, KillOutcome, KillRequest, KillSwitchList,
};
use common::api::EnvironmentQuery;
use std::process::ExitCode;

#[derive(Args)]
pub struct KillArgs {
    name: String,
    #[arg(long)]
    env: String,
    #[arg(long)]
    service: Option<String>,
    #[arg(long)]
    reason: String,
}

#[derive(Subcommand)]
pub enum KillswitchesCmd {
    List {
        #[arg(long)]
        env: String,
    },
    /// Declare a switch that apps check themselves through the local API.
    Create {
        name: String,
        #[arg(long)]
        description: String,
    },
}

pub fn kill(c: &Client, k: KillArgs, killed: bool) -> Out {
    let verb = if killed { "kill" } else { "revive" };
    let req = KillRequest {
        environment: k.env.clone(),
        service: k.service.clone(),
        reason: k.reason,
    };
    let a = c.post::<KillOutcome, _>(&format!("/killswitches/{}/{verb}", q(&k.name)), &req)?;
    c.show(&a, |o| {
        let scope = k
            .service
            .as_ref()
            .map(|s| format!(" for service {s}"))
            .unwrap_or_default();
        let state = if killed { "killed" } else { "alive" };
        if o.changed {
            println!(
                "{} is now {state} in {}{scope} (revision {})",
                k.name,
                k.env,
                or_dash(o.revision)
            );
        } else {
            println!("{} was already {state} in {}{scope}", k.name, k.env);
        }
    });
    Ok(ExitCode::SUCCESS)
}

pub fn run(c: &Client, cmd: KillswitchesCmd) -> Out {
    match cmd {
        KillswitchesCmd::List { env } => {
            let query = EnvironmentQuery { environment: env };
            let a = c.get_with::<KillSwitchList, _>("/killswitches", &query)?;
            c.show(&a, |list| {
                let t = Table::new(&[
                    ("NAME", 24),
                    ("SERVICE", 10),
                    ("STATE", 7),
                    ("SINCE", 24),
                    ("BY", 12),
                    ("APPLIED", 9),
                    ("LAGGING", 0),
                ]);
                for k in &list.killswitches {
                    let lag: Vec<String> = k
                        .lagging
                        .iter()
                        .map(|a| format!("{} ({})", a.instance, a.id))
                        .collect();
                    t.row([
                        k.name.clone(),
                        k.service.clone().unwrap_or_else(|| "*".into()),
                        if k.killed { "KILLED" } else { "alive" }.to_string(),
                        or_dash(k.since.as_ref()),
                        if k.by.is_empty() { "-" } else { &k.by }.to_string(),
                        format!("{}/{}", k.applied, k.agents),
                        if lag.is_empty() {
                            "-".to_string()
                        } else {
                            lag.join(", ")
                        },
                    ]);
                }
            });
        }
        KillswitchesCmd::Create { name, description } => {
            let req = DeclareRequest {
                name: name.clone(),
                description,
            };
            let a = c.post::<Declared, _>("/killswitches", &req)?;
            c.show(&a, |_| println!("kill switch {name} declared"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
