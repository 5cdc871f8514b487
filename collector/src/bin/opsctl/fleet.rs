//! `opsctl agents`: enrolled agents, enrollment tokens, revoking either.

use crate::client::{or_dash, q, Client, Failure, Out};
use crate::table::Table;
use clap::Subcommand;
use common::api::fleet::{
    AgentList, AgentQuery, EnrollTokenCreated, EnrollTokenList, EnrollTokenRequest,
};
use common::api::{ReasonRequest, Revoked};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum AgentsCmd {
    List {
        #[arg(long)]
        env: Option<String>,
        #[arg(long)]
        service: Option<String>,
    },
    /// Create an enrollment token (printed alone on the last line); it
    /// enrolls one agent unless --uses says more.
    EnrollToken {
        #[arg(long)]
        env: String,
        #[arg(long)]
        service: String,
        /// at most 10y
        #[arg(long, default_value = "24h")]
        expires: String,
        /// How many agents it may enroll (1 to 10000).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        uses: u32,
    },
    /// Enrollment tokens: list them, revoke one.
    #[command(subcommand)]
    EnrollTokens(EnrollTokensCmd),
    Revoke {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
pub enum EnrollTokensCmd {
    /// Every enrollment token with its uses.
    List,
    /// Revoke an enrollment token: no agent enrolls with it any more.
    Revoke {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

pub fn run(c: &Client, cmd: AgentsCmd) -> Out {
    match cmd {
        AgentsCmd::List { env, service } => {
            let query = AgentQuery {
                environment: env,
                service,
            };
            let a = c.get_with::<AgentList, _>("/agents", &query)?;
            c.show(&a, |list| {
                let t = Table::new(&[
                    ("ID", 14),
                    ("ENV", 10),
                    ("SERVICE", 12),
                    ("INSTANCE", 20),
                    ("VERSION", 10),
                    ("STATE", 9),
                    ("LAST SEEN", 24),
                    ("REVISION", 0),
                ]);
                for a in &list.agents {
                    t.row([
                        a.id.clone(),
                        a.environment.clone(),
                        a.service.clone(),
                        a.instance.clone(),
                        a.version.clone(),
                        a.state.to_string(),
                        a.last_seen.clone(),
                        or_dash(a.applied_revision),
                    ]);
                }
            });
        }
        AgentsCmd::EnrollToken {
            env,
            service,
            expires,
            uses,
        } => {
            collector::auth::expiry_ms(Some(&expires)).map_err(Failure::Usage)?;
            let req = EnrollTokenRequest {
                environment: env,
                service,
                expires: Some(expires),
                uses: Some(uses),
            };
            let a = c.post::<EnrollTokenCreated, _>("/agents/enroll-tokens", &req)?;
            c.show(&a, |t| {
                println!(
                    "enrollment token for service {} in {} (expires {}, enrolls {} agent(s)):",
                    t.service,
                    t.environment,
                    or_dash(t.expires.as_ref()),
                    or_dash(t.uses)
                );
                println!("{}", t.token);
            });
        }
        AgentsCmd::Revoke { id, reason } => {
            let a = c.post::<Revoked, _>(
                &format!("/agents/{}/revoke", q(&id)),
                &ReasonRequest { reason },
            )?;
            c.show(&a, |_| println!("agent {id} revoked"));
        }
        AgentsCmd::EnrollTokens(EnrollTokensCmd::List) => {
            let a = c.get::<EnrollTokenList>("/agents/enroll-tokens")?;
            c.show(&a, |list| {
                let t = Table::new(&[
                    ("ID", 10),
                    ("ENV", 10),
                    ("SERVICE", 12),
                    ("USES", 7),
                    ("EXPIRES", 24),
                    ("CREATED", 24),
                    ("REVOKED", 0),
                ]);
                for e in &list.enroll_tokens {
                    let max = e.max_uses.map_or("∞".to_string(), |m| m.to_string());
                    t.row([
                        e.id.clone(),
                        e.environment.clone(),
                        e.service.clone(),
                        format!("{}/{max}", e.uses),
                        or_dash(e.expires.as_ref()),
                        e.created.clone(),
                        or_dash(e.revoked.as_ref()),
                    ]);
                }
            });
        }
        AgentsCmd::EnrollTokens(EnrollTokensCmd::Revoke { id, reason }) => {
            let a = c.post::<Revoked, _>(
                &format!("/agents/enroll-tokens/{}/revoke", q(&id)),
                &ReasonRequest { reason },
            )?;
            c.show(&a, |_| println!("enrollment token {id} revoked"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
