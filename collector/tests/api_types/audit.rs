//! Audit (list, verify, export) and the error body of refusals.

use crate::harness::{typed, Harness};
use common::api::approvals::ApprovalList;
use common::api::audit::{AuditEntry, AuditList, VerifyReport};
use common::api::{ErrorBody, ReasonRequest};
use reqwest::StatusCode;

pub async fn audit(h: &Harness) {
    let all: AuditList = h.get("GET /audit", "/audit").await;
    assert!(all.entries.len() > 10);
    let some: AuditList = h
        .get(
            "GET /audit",
            "/audit?since=1h&until=2999-01-01T00:00:00Z&actor=alice&action=flags.apply&limit=5",
        )
        .await;
    assert!(!some.entries.is_empty() && some.entries.len() <= 5);
    let report: VerifyReport = h.get("GET /audit/verify", "/audit/verify").await;
    assert!(report.ok && report.first_bad_seq.is_none());

    let (status, jsonl) = h
        .raw(&h.admin, "GET /audit/export", "/audit/export", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    for (i, line) in jsonl.lines().enumerate() {
        let _: AuditEntry = typed(&format!("export line {}", i + 1), line);
    }
    let (status, csv) = h
        .raw(
            &h.admin,
            "GET /audit/export",
            "/audit/export?format=csv",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(csv.starts_with("seq,"), "{csv}");
}

/// Refusals answer the error body: unknown token, missing role, unknown
/// flag, approving one's own request, a bad query.
pub async fn refusals(h: &Harness) {
    let e: ErrorBody = h
        .call(
            "opsp_nope",
            "GET /whoami",
            "/whoami",
            None,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    assert_eq!(e.error.code, "UNAUTHORIZED");
    let e: ErrorBody = h
        .call(
            &h.alice,
            "GET /tokens",
            "/tokens",
            None,
            StatusCode::FORBIDDEN,
        )
        .await;
    assert_eq!(e.error.code, "FORBIDDEN");
    let e: ErrorBody = h
        .call(
            &h.admin,
            "GET /flags/{key}",
            "/flags/zzz?environment=dev",
            None,
            StatusCode::NOT_FOUND,
        )
        .await;
    assert_eq!(e.error.code, "FLAG_NOT_FOUND");
    let e: ErrorBody = h
        .call(
            &h.admin,
            "GET /audit/export",
            "/audit/export?format=xml",
            None,
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert_eq!(e.error.code, "BAD_REQUEST");
    let open: ApprovalList = h.get("GET /approvals", "/approvals?state=pending").await;
    let mine = open
        .approvals
        .iter()
        .find(|a| a.requested_person == "alice")
        .expect("alice's flags set in prod still waits");
    let e: ErrorBody = h
        .post(
            &h.alice,
            "POST /approvals/{id}/approve",
            &format!("/approvals/{}/approve", mine.id),
            &ReasonRequest::default(),
            StatusCode::FORBIDDEN,
        )
        .await;
    assert_eq!(e.error.code, "FORBIDDEN");
}
