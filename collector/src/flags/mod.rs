//! Flags: flagd flag definitions per environment, written as numbered,
//! immutable revisions and pushed to the agents. A change is either a whole
//! definition (`apply`) or one flag's state or default variant (`set`); both
//! may wait for an approval in a protected environment. A whole definition
//! is validated in one place, [`check_definition`] (compiled off the store's
//! writer thread, warnings found), whether it is previewed, applied at once
//! or approved later; the store writes only what that check returned
//! (`CheckedApply`). One flag's change is checked by `store::flags::check_set`
//! against the revision it changes.
//!
//! Routes: `GET /api/v1/flags`, `POST /api/v1/flags/apply`,
//! `GET|POST /api/v1/flags/{key}`, `GET /api/v1/revisions`,
//! `GET /api/v1/revisions/{revision}`; console `/console/flags`,
//! `/console/flags/set`, `/console/flags/diff`, `/console/flags/preview`,
//! `/console/flags/apply`. Audit actions: [`Action`].

pub mod api;
pub mod console;

use crate::kernel::{ApiError, ErrorCode, Role, Route};
use crate::store::flags::{CheckedApply, FlagChange, FlagError};
use crate::store::StoreError;
use crate::Ctx;
use serde_json::json;
use serde_json::Value;

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

/// The one validation of a whole flag definition: flagd's schema and the
/// compiled-size budget (refused whole), and its warnings. Runs on the
/// blocking pool, never on the store's writer.
pub async fn check_definition(definition: Value) -> Result<CheckedApply, FlagError> {
    crate::store::flags::check_apply(definition).await
}

/// What applying `definition` to `environment` would change (dry run,
/// console preview): checked by [`check_definition`], diffed against the
/// revision in force; writes nothing.
pub async fn preview(
    ctx: &Ctx,
    environment: &str,
    definition: Value,
) -> Result<FlagChange, FlagError> {
    crate::kernel::names::check(environment).map_err(StoreError::Invalid)?;
    let checked = check_definition(definition.clone()).await?;
    let env = environment.to_string();
    let current = ctx
        .store
        .read(move |c| crate::store::flags::latest(c, &env))
        .await?;
    let (revision, before) = match current {
        Some(r) => (Some(r.revision), r.flags),
        None => (None, crate::store::flags::empty_definition()),
    };
    let diff = common::diff::diff(&before, &definition);
    Ok(FlagChange {
        revision,
        changed: !diff.is_empty(),
        diff,
        warnings: checked.warnings().to_vec(),
    })
}

/// The revision in force in `environment`, if any.
pub async fn latest(
    ctx: &Ctx,
    environment: &str,
) -> crate::store::Result<Option<common::wire::Revision>> {
    let env = environment.to_string();
    ctx.store
        .read(move |c| crate::store::flags::latest(c, &env))
        .await
}

/// Why a flag change was refused: a rule of this capability (an API error)
/// or the definition's check.
pub enum Refused {
    Rule(ApiError),
    Check(FlagError),
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Refused::Rule(e)
    }
}

/// `flags set`: one flag's state and/or default variant, with a reason. May
/// wait for an approval; a new warning is refused (the revision's own were
/// accepted when it was applied).
pub async fn set_flag(
    ctx: &Ctx,
    actor: &crate::kernel::Actor,
    environment: String,
    key: String,
    state: Option<String>,
    default_variant: Option<String>,
    reason: &str,
) -> Result<crate::approvals::Submitted, Refused> {
    crate::kernel::error::require_reason(reason)?;
    if state.is_none() && default_variant.is_none() {
        return Err(ApiError::bad_request("give state or default_variant").into());
    }
    let op = crate::approvals::Op::flag_set(environment, key, state, default_variant);
    crate::approvals::submit_checked(ctx, actor, op, false, reason)
        .await
        .map_err(Refused::Check)
}

/// `flags apply`: a whole definition, with a reason; its warnings must be
/// accepted (`accept_warnings`). May wait for an approval.
pub async fn apply(
    ctx: &Ctx,
    actor: &crate::kernel::Actor,
    environment: String,
    definition: Value,
    accept_warnings: bool,
    reason: &str,
) -> Result<crate::approvals::Submitted, Refused> {
    crate::kernel::error::require_reason(reason)?;
    let op = crate::approvals::Op::flag_apply(environment, definition);
    crate::approvals::submit_checked(ctx, actor, op, accept_warnings, reason)
        .await
        .map_err(Refused::Check)
}
