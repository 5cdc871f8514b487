//! Flags: the definitions in force (`/flags`), changing them (`apply` a
//! whole definition, `set` one flag; either may wait for approval) and the
//! revision history (`/revisions`). Flag definitions are flagd documents and
//! stay `serde_json::Value`; so do diffs (lists of `common::diff::Change`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::wire::Revision;

/// The refusal code of a flag change with warnings nobody accepted (HTTP
/// 422); its error object lists them in `warnings`.
pub const DEFINITION_WARNINGS: &str = "DEFINITION_WARNINGS";

/// `GET /flags?environment=E`: the whole definition in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub environment: String,
    /// `None` while the environment has no revision yet.
    pub revision: Option<u64>,
    /// flagd flag-definition document.
    pub definition: Value,
}

/// `GET /flags/{key}?environment=E`: one flag as defined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    pub key: String,
    pub environment: String,
    pub revision: Option<u64>,
    /// The flag's flagd definition.
    pub flag: Value,
}

/// `POST /flags/apply`: replace the environment's definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub environment: String,
    pub definition: Value,
    /// Required unless `dry_run`.
    #[serde(default)]
    pub reason: String,
    /// Only compute the change.
    #[serde(default)]
    pub dry_run: bool,
    /// Apply even though the definition has warnings (they are recorded).
    #[serde(default)]
    pub accept_warnings: bool,
}

/// `POST /flags/{key}`: one flag's state and/or default variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetRequest {
    pub environment: String,
    /// `ENABLED` or `DISABLED`.
    pub state: Option<String>,
    pub default_variant: Option<String>,
    #[serde(default)]
    pub reason: String,
}

/// What a flag change did (or, in a dry run, would do). The answer of a
/// dry run, and of an apply or set done at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagChange {
    /// The revision now in force (unchanged when nothing changed).
    pub revision: Option<u64>,
    pub changed: bool,
    /// A list of `common::diff::Change`.
    pub diff: Value,
    /// `diff` rendered for terminals, one line per change.
    pub diff_text: String,
    /// The warnings of the definition in force after the change (or
    /// previewed): problems flagd loads anyway.
    pub warnings: Vec<String>,
}

/// `GET /revisions?environment=E&limit=N` (newest first, 100 unless given).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionsQuery {
    pub environment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `GET /revisions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionList {
    pub revisions: Vec<RevisionInfo>,
}

/// One revision in the history (`GET /revisions/{n}` answers the whole
/// [`Revision`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionInfo {
    pub revision: u64,
    pub environment: String,
    pub created: String,
    pub actor: String,
    pub summary: String,
}
