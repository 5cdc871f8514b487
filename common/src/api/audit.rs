//! Audit: listing entries (`/audit`), checking the hash chain
//! (`/audit/verify`) and the export (`/audit/export`, JSON lines of
//! [`AuditEntry`] or CSV; not a JSON answer).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `GET /audit?...`: every member optional; times are `"24h"` (ago) or RFC 3339.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `GET /audit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
}

/// One entry of the chained audit log; also one line of the JSON lines export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub ts_ms: i64,
    pub time: String,
    pub actor: String,
    /// The actor's role as recorded.
    pub role: String,
    pub source: String,
    pub user_agent: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    /// A list of `common::diff::Change` between before and after.
    pub diff: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// `GET /audit/verify`: `ok` false names the first bad entry and the problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub entries: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub head_hash: String,
}

/// `GET /audit/export?format=F`: JSON lines unless `csv`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}
