//! `opsctl tokens` and `opsctl users`: API tokens and console users. A new
//! secret (token, generated password) is printed alone on the last line,
//! also when the change waits for approval.

use crate::approvals::done_or_note;
use crate::client::{or_dash, q, Client, Failure, Out};
use crate::table::Table;
use clap::Subcommand;
use common::api::access::{
    Role, TokenCreateAnswer, TokenCreateRequest, TokenList, UserAddAnswer, UserAddRequest,
    UserList, UserRole, UserRoleRequest,
};
use common::api::{ReasonRequest, Revoked, Submitted};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum TokensCmd {
    /// Create an API token (printed alone on the last line).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        expires: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    List,
    Revoke {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
pub enum UsersCmd {
    /// Add a user; prints a generated password unless --password-file is given.
    Add {
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    List,
    /// Change a user's role.
    SetRole {
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        reason: String,
    },
}

/// `--role`: refused like any other failed operation (exit 1), as when the
/// collector refused it.
fn role(s: &str) -> Result<Role, Failure> {
    s.parse().map_err(Failure::Op)
}

pub fn tokens(c: &Client, cmd: TokensCmd) -> Out {
    match cmd {
        TokensCmd::Create {
            name,
            role: r,
            expires,
            reason,
        } => {
            collector::auth::expiry_ms(expires.as_deref()).map_err(Failure::Usage)?;
            let req = TokenCreateRequest {
                name,
                role: role(&r)?,
                expires,
                reason,
            };
            let a = c.post::<TokenCreateAnswer, _>("/tokens", &req)?;
            c.show(&a, |answer| {
                let Some(t) = done_or_note(&answer.outcome) else {
                    println!("the token works once the request is approved (shown once):");
                    println!("{}", answer.token);
                    return;
                };
                println!(
                    "API token {} ({}, role {}, expires {}):",
                    t.id,
                    t.name,
                    t.role,
                    or_dash(t.expires.as_ref())
                );
                println!("{}", answer.token);
            });
        }
        TokensCmd::List => {
            let a = c.get::<TokenList>("/tokens")?;
            c.show(&a, |list| {
                let t = Table::new(&[
                    ("ID", 10),
                    ("NAME", 20),
                    ("ROLE", 10),
                    ("CREATED", 24),
                    ("EXPIRES", 24),
                    ("REVOKED", 0),
                ]);
                for k in &list.tokens {
                    t.row([
                        k.id.clone(),
                        k.name.clone(),
                        k.role.to_string(),
                        k.created.clone(),
                        or_dash(k.expires.as_ref()),
                        or_dash(k.revoked.as_ref()),
                    ]);
                }
            });
        }
        TokensCmd::Revoke { id, reason } => {
            let a = c.post::<Revoked, _>(
                &format!("/tokens/{}/revoke", q(&id)),
                &ReasonRequest { reason },
            )?;
            c.show(&a, |_| println!("token {id} revoked"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn users(c: &Client, cmd: UsersCmd) -> Out {
    match cmd {
        UsersCmd::SetRole {
            name,
            role: r,
            reason,
        } => {
            let req = UserRoleRequest {
                role: role(&r)?,
                reason,
            };
            let a = c.post::<Submitted<UserRole>, _>(&format!("/users/{}/role", q(&name)), &req)?;
            c.show(&a, |s| {
                if let Some(u) = done_or_note(s) {
                    println!("{} now has the {} role", u.name, u.role);
                }
            });
        }
        UsersCmd::Add {
            name,
            role: r,
            password_file,
            reason,
        } => {
            let password = match password_file {
                Some(f) => Some(
                    std::fs::read_to_string(&f)
                        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", f.display())))?
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                ),
                None => None,
            };
            let req = UserAddRequest {
                name,
                role: role(&r)?,
                password,
                reason,
            };
            let a = c.post::<UserAddAnswer, _>("/users", &req)?;
            c.show(&a, |answer| {
                if let Some(u) = done_or_note(&answer.outcome) {
                    println!("user {} added with role {}", u.name, u.role);
                }
                if let Some(p) = &answer.password {
                    println!("password (shown once):");
                    println!("{p}");
                }
            });
        }
        UsersCmd::List => {
            let a = c.get::<UserList>("/users")?;
            c.show(&a, |list| {
                let t = Table::headless(&[24, 10, 0]);
                for u in &list.users {
                    t.row([u.name.clone(), u.role.to_string(), u.created.clone()]);
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
