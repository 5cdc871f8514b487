//! `opsctl audit`: list entries, verify the hash chain (exit 1 and the
//! first bad entry if tampered), export as JSON lines or CSV.

use crate::client::{or_dash, Client, Out};
use clap::Subcommand;
use common::api::audit::{AuditList, AuditQuery, ExportQuery, VerifyReport};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum AuditCmd {
    List {
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Check the hash chain; exit 1 and name the first bad entry if tampered.
    Verify,
    Export {
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "csv"])]
        format: String,
    },
}

pub fn run(c: &Client, cmd: AuditCmd) -> Out {
    match cmd {
        AuditCmd::List {
            since,
            actor,
            action,
            limit,
        } => {
            let query = AuditQuery {
                since,
                actor,
                action,
                limit: Some(limit),
                ..AuditQuery::default()
            };
            let a = c.get_with::<AuditList, _>("/audit", &query)?;
            // one line per entry, as the log reads; not a table
            c.show(&a, |list| {
                for e in &list.entries {
                    let reason = if e.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" reason={:?}", e.reason)
                    };
                    println!(
                        "#{} {} {} ({}, {}) {} {}{}",
                        e.seq, e.time, e.actor, e.role, e.source, e.action, e.target, reason
                    );
                }
            });
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Verify => {
            let a = c.get::<VerifyReport>("/audit/verify")?;
            let ok = a.body.ok;
            c.show(&a, |r| {
                if ok {
                    println!(
                        "audit chain intact: {} entries, head {}",
                        r.entries, r.head_hash
                    );
                } else {
                    println!(
                        "AUDIT CHAIN BROKEN at entry {}: {}",
                        or_dash(r.first_bad_seq),
                        or_dash(r.problem.as_ref())
                    );
                }
            });
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCmd::Export { format } => {
            let query = ExportQuery {
                format: Some(format),
            };
            print!("{}", c.get_text("/audit/export", &query)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
