//! The audit log's console pages: entries with filters, chain
//! verification, export.

use crate::console::page::{page, S};
use crate::console::render::{diff_table, time};
use crate::console::{PageError, PageResult};
use crate::kernel::Role;
use crate::store::audit;
use crate::Ctx;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Extension;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

// ---- audit ----

#[derive(Deserialize, Default)]
pub(crate) struct AuditQ {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
}

/// `datetime-local` values (`2026-11-23T01:02`, taken as UTC) or RFC 3339.
fn parse_when(s: &Option<String>) -> Result<Option<i64>, PageError> {
    let Some(s) = s.as_deref().map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let full = if s.len() == 16 {
        format!("{s}:00Z")
    } else {
        s.to_string()
    };
    common::time::parse_rfc3339(&full).map(Some).ok_or_else(|| {
        PageError::bad_request(format!("cannot read the time {s:?}; use 2026-11-23T14:00"))
    })
}

pub(crate) fn audit_table(entries: &[audit::AuditEntry], now: i64, with_diff: bool) -> Markup {
    html! {
        @if entries.is_empty() { p.muted { "No entries." } } @else {
            div.audit {
                @for e in entries {
                    div.entry {
                        div.entry-head {
                            span.seq { "#" (e.seq) }
                            span.action { code { (e.action) } }
                            span.target { (e.target) }
                            span.actor { strong { (e.actor) } @if e.actor != "anonymous" { " (" (e.role) ")" } }
                            span.when { (time(e.ts_ms, now)) }
                        }
                        @if !e.reason.is_empty() { div.reason { "Reason: " em { (e.reason) } } }
                        @if with_diff {
                            div.meta.muted { "from " (e.source) @if !e.user_agent.is_empty() { " · " span.ua title="reported by the client, not verified" { (e.user_agent) } } }
                            @if let Some(changes) = requested_changes(e) {
                                div.muted { "Requested changes:" }
                                (diff_table(changes))
                            } @else if e.diff.as_array().is_some_and(|d| !d.is_empty()) {
                                (diff_table(&e.diff))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The changes a four-eyes request asked for, from its audit entry.
fn requested_changes(e: &audit::AuditEntry) -> Option<&Value> {
    if e.action != crate::approvals::Action::Request.as_str() {
        return None;
    }
    e.diff.get(0)?.get("after")?.get("changes")
}

pub(crate) async fn audit_page(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Query(q): Query<AuditQ>,
) -> PageResult {
    let limit = q
        .limit
        .as_deref()
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(1, 1000);
    let f = audit::Filter {
        since_ms: parse_when(&q.since)?,
        until_ms: parse_when(&q.until)?,
        actor: q.actor.clone().filter(|s| !s.is_empty()),
        action: q.action.clone().filter(|s| !s.is_empty()),
        target: q.target.clone().filter(|s| !s.is_empty()),
        limit: Some(limit),
    };
    let entries = ctx.store.read(move |c| audit::list(c, &f)).await?;
    let now = ctx.clock.now_ms();
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    let body = html! {
        form.filters method="get" action="/console/audit" {
            label { "Actor " input name="actor" value=(v(&q.actor)) placeholder="e.g. admin"; }
            label { "Action " input name="action" value=(v(&q.action)) placeholder="e.g. killswitch.kill" list="actions"; }
            datalist id="actions" {
                @for a in super::registry() { option value=(a) {} }
            }
            label { "Target contains " input name="target" value=(v(&q.target)); }
            label { "From (UTC) " input type="datetime-local" name="since" value=(v(&q.since)); }
            label { "To (UTC) " input type="datetime-local" name="until" value=(v(&q.until)); }
            button.primary type="submit" { "Search" }
        }
        div.toolbar {
            a.button href="/console/audit/verify" { "Verify chain" }
            @if s.can(Role::Admin) {
                a.button href="/console/audit/export?format=jsonl" { "Export JSONL" }
                a.button href="/console/audit/export?format=csv" { "Export CSV" }
            }
            span.muted { "Showing the newest " (entries.len()) " matching entries." }
        }
        (audit_table(&entries, now, true))
    };
    page(&ctx, &s, "audit", "Audit log", body).await
}

pub(crate) async fn audit_verify(State(ctx): State<Ctx>, Extension(s): S) -> PageResult {
    let r = ctx.store.read(audit::verify).await?;
    let body = html! {
        @if r.ok {
            div.card.verify.ok {
                h2 { "✓ The audit chain is intact" }
                p { (r.entries) " entries checked; every entry links to the one before it and matches its hash." }
                p.muted { "Head hash: " code { (r.head_hash) } }
            }
        } @else {
            div.card.verify.bad {
                h2 { "✗ The audit chain is broken" }
                p { "First bad entry: " strong { (r.first_bad_seq.unwrap_or(0)) } ". " (r.problem.clone().unwrap_or_default()) }
                p { "Compare with an exported copy to see what was changed." }
            }
        }
        p { a href="/console/audit" { "← Back to the audit log" } }
    };
    page(&ctx, &s, "audit", "Verify audit chain", body).await
}

#[derive(Deserialize)]
pub(crate) struct ExportQ {
    format: Option<String>,
}

pub(crate) async fn audit_export(State(ctx): State<Ctx>, Query(q): Query<ExportQ>) -> PageResult {
    let csv = match q.format.as_deref().unwrap_or("jsonl") {
        "jsonl" => false,
        "csv" => true,
        other => {
            return Err(PageError::bad_request(format!(
                "unknown format {other:?} (jsonl or csv)"
            )))
        }
    };
    let body = ctx.store.read(move |c| audit::export(c, csv)).await?;
    let (ctype, file) = if csv {
        ("text/csv; charset=utf-8", "audit.csv")
    } else {
        ("application/x-ndjson", "audit.jsonl")
    };
    Ok((
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        body,
    )
        .into_response())
}
