//! `opsctl approvals`: four-eyes requests (list, approve, reject), and the
//! note every change that waits for approval prints.

use crate::client::{q, Client, Out};
use crate::table::Table;
use clap::Subcommand;
use common::api::approvals::{ApprovalList, ApprovalResult, ApprovalsQuery, Decision};
use common::api::{Pending, ReasonRequest, Submitted};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ApprovalsCmd {
    /// Requests (pending by default).
    List {
        /// pending, approved, rejected, expired or all
        #[arg(long, default_value = "pending")]
        state: String,
    },
    /// Approve someone else's request; the change takes effect at once.
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Reject a request (or withdraw your own).
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

pub fn run(c: &Client, cmd: ApprovalsCmd) -> Out {
    match cmd {
        ApprovalsCmd::List { state } => {
            let query = ApprovalsQuery {
                state: Some(state),
                limit: None,
            };
            let a = c.get_with::<ApprovalList, _>("/approvals", &query)?;
            c.show(&a, |list| {
                let t = Table::new(&[
                    ("ID", 14),
                    ("STATE", 9),
                    ("ACTION", 14),
                    ("TARGET", 28),
                    ("BY", 12),
                    ("EXPIRES", 24),
                    ("REASON", 0),
                ]);
                for a in &list.approvals {
                    t.row([
                        a.id.clone(),
                        a.state.to_string(),
                        a.action.clone(),
                        a.target.clone(),
                        a.requested_by.clone(),
                        a.expires.clone(),
                        a.reason.clone(),
                    ]);
                }
            });
        }
        ApprovalsCmd::Approve { id, reason } => {
            let a = c.post::<Decision, _>(
                &format!("/approvals/{}/approve", q(&id)),
                &ReasonRequest { reason },
            )?;
            c.show(&a, |d| {
                println!(
                    "request {id} approved: {} {} is done",
                    d.approval.action, d.approval.target
                );
                if let Some(ApprovalResult::Flags(change)) = &d.result {
                    print!("{}", change.diff_text);
                }
            });
        }
        ApprovalsCmd::Reject { id, reason } => {
            let a = c.post::<Decision, _>(
                &format!("/approvals/{}/reject", q(&id)),
                &ReasonRequest { reason },
            )?;
            c.show(&a, |_| println!("request {id} rejected"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the "waiting for approval" note of a 202 answer; `None` if the
/// change was done at once (its result returned).
pub fn done_or_note<T>(s: &Submitted<T>) -> Option<&T> {
    match s {
        Submitted::Done(t) => Some(t),
        Submitted::Pending(p) => {
            print_pending(p);
            None
        }
    }
}

fn print_pending(p: &Pending) {
    let a = &p.approval;
    println!(
        "waiting for approval: request {} ({} {}) expires {}; another person runs `opsctl approvals approve {}`",
        a.id, a.action, a.target, a.expires, a.id
    );
    let diff: Vec<common::diff::Change> =
        serde_json::from_value(a.diff.clone()).unwrap_or_default();
    print!("{}", common::diff::render(&diff));
    print_warnings(
        "accepted warnings (shown to the approver)",
        &a.accepted_warnings,
    );
}

/// Prints `title (N):` and one warning a line, if there are any.
pub fn print_warnings(title: &str, warnings: &[String]) {
    if warnings.is_empty() {
        return;
    }
    println!("{title} ({}):", warnings.len());
    for w in warnings {
        println!("  - {w}");
    }
}
