//! Flags: flagd flag definitions per environment, written as numbered,
//! immutable revisions and pushed to the agents. A change is either a whole
//! definition (`apply`) or one flag's state or default variant (`set`); both
//! may wait for an approval in a protected environment, and both are checked
//! (compiled, warnings found) once, off the store's writer thread, in
//! `store::flags::check_apply` / `check_set` before they are written.
//!
//! Routes: `GET /api/v1/flags`, `POST /api/v1/flags/apply`,
//! `GET|POST /api/v1/flags/{key}`, `GET /api/v1/revisions`,
//! `GET /api/v1/revisions/{revision}`; console `/console/flags`,
//! `/console/flags/set`, `/console/flags/diff`, `/console/flags/preview`,
//! `/console/flags/apply`. Audit actions: [`Action`].

pub mod api;
pub mod console;

use crate::kernel::{ApiError, ErrorCode, Role, Route};
use crate::store::flags::FlagError;
use serde_json::json;

crate::audit::actions! {
    /// Audit actions of flags.
    pub enum Action {
        Set => "flags.set",
        Apply => "flags.apply",
    }
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::get("/api/v1/flags", Role::Viewer, api::flags_get_all),
        Route::post("/api/v1/flags/apply", Role::Operator, api::flags_apply)
            .approvable()
            .definition_body(),
        Route::get("/api/v1/flags/{key}", Role::Viewer, api::flag_get),
        Route::post("/api/v1/flags/{key}", Role::Operator, api::flag_set).approvable(),
        Route::get("/api/v1/revisions", Role::Viewer, api::revisions_list),
        Route::get(
            "/api/v1/revisions/{revision}",
            Role::Viewer,
            api::revision_get,
        ),
        Route::get("/console/flags", Role::Viewer, console::flags).nav("flags", "Flags", 30),
        Route::post("/console/flags/set", Role::Operator, console::flag_set)
            .approvable()
            .definition_body(),
        Route::get("/console/flags/diff", Role::Viewer, console::flags_diff),
        Route::post(
            "/console/flags/preview",
            Role::Operator,
            console::flags_preview,
        )
        .definition_body(),
        Route::post("/console/flags/apply", Role::Operator, console::flags_apply)
            .approvable()
            .definition_body(),
    ]
}

/// A refused flag change as an API error: `INVALID_DEFINITION`, or
/// `DEFINITION_WARNINGS` (422) whose error object lists every warning
/// (`warnings`). `subject` names what has the warnings, `hint` how to
/// accept them.
pub fn refusal(e: FlagError, subject: &str, hint: &str) -> ApiError {
    match e {
        FlagError::Definition(d) => ApiError::new(ErrorCode::InvalidDefinition, d.to_string()),
        FlagError::Warnings(warnings) => ApiError::new(
            ErrorCode::DefinitionWarnings,
            format!(
                "{subject} has {} warning(s) (flagd would load it and answer these at evaluation time): {}; {hint}",
                warnings.len(),
                warnings.join("; ")
            ),
        )
        .with("warnings", json!(warnings)),
        FlagError::Store(s) => s.into(),
    }
}
