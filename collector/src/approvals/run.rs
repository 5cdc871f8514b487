//! Running approvable operations: at once, or recorded as a pending
//! request and run on approval (see the module doc of `approvals`).

use super::{Op, Policy, MAX_EXPIRE_AFTER, MIN_EXPIRE_AFTER};
use crate::kernel::Actor;
use crate::store::{self, approvals::Approval, flags::FlagError, StoreError};
use crate::Ctx;
use common::wire::Revision;
use serde_json::{json, Value};
use std::sync::Arc;

/// What an operation did (or, in a dry run, would do).
#[derive(Debug, Clone)]
pub struct Executed {
    /// A new revision to push to agents.
    pub revision: Option<Revision>,
    /// The changes, as shown to the approver.
    pub diff: Value,
    /// The JSON the API answers with.
    pub output: Value,
    pub changed: bool,
}

/// Runs `op` through the store functions inside `tx`.
pub fn execute(
    tx: &crate::store::Tx<'_>,
    op: &Op,
    actor: &Actor,
    reason: &str,
) -> store::Result<Executed> {
    match op {
        // flag definitions were compiled off the writer by [`check`]
        Op::FlagSet { checked, .. } => {
            let checked = checked.as_deref().ok_or_else(not_checked)?;
            let (change, rev) = store::flags::set(tx, actor, checked, reason)?;
            Ok(flag_executed(change, rev))
        }
        Op::FlagApply {
            environment,
            checked,
            ..
        } => {
            let checked = checked.as_deref().ok_or_else(not_checked)?;
            let (change, rev) = store::flags::apply(tx, actor, environment, checked, reason)?;
            Ok(flag_executed(change, rev))
        }
        Op::UserAdd {
            name,
            role,
            password_hash,
        } => {
            let u = store::users::add(tx, actor, name, *role, password_hash, reason)?;
            let after = json!({"name": u.name, "role": u.role});
            Ok(Executed {
                revision: None,
                diff: diff_value(&json!(null), &after),
                output: after,
                changed: true,
            })
        }
        Op::UserSetRole { name, role } => {
            let before = store::users::list(tx)?
                .into_iter()
                .find(|u| &u.name == name)
                .map(|u| json!({"name": u.name, "role": u.role}))
                .unwrap_or(Value::Null);
            let u = store::users::set_role(tx, actor, name, *role, reason)?;
            let after = json!({"name": u.name, "role": u.role});
            Ok(Executed {
                revision: None,
                diff: diff_value(&before, &after),
                changed: before != after,
                output: after,
            })
        }
        Op::TokenCreate {
            id,
            name,
            role,
            secret_hash,
            expires_ms,
        } => {
            let t = store::tokens::insert_api_token(
                tx,
                actor,
                id,
                secret_hash,
                name,
                *role,
                *expires_ms,
                reason,
            )?;
            let after = json!({"id": t.id, "name": t.name, "role": t.role, "expires": t.expires});
            Ok(Executed {
                revision: None,
                diff: diff_value(&json!(null), &after),
                output: after,
                changed: true,
            })
        }
        Op::PolicySet {
            policy,
            config_default,
        } => {
            for env in &policy.protected_environments {
                crate::kernel::names::check(env).map_err(StoreError::Invalid)?;
            }
            if policy.expire_after_ms < MIN_EXPIRE_AFTER.as_millis() as i64 {
                return Err(StoreError::Invalid(
                    "requests must stay open at least one minute".into(),
                ));
            }
            if policy.expire_after_ms > MAX_EXPIRE_AFTER.as_millis() as i64 {
                return Err(StoreError::Invalid(format!(
                    "requests may stay open at most {}",
                    common::config::humanize(MAX_EXPIRE_AFTER)
                )));
            }
            let before =
                store::approvals::policy(tx)?.unwrap_or(serde_json::to_value(config_default)?);
            let after = serde_json::to_value(policy)?;
            if before != after {
                store::approvals::set_policy(tx, actor, &before, &after, reason)?;
            }
            Ok(Executed {
                revision: None,
                diff: diff_value(&before, &after),
                changed: before != after,
                output: after,
            })
        }
    }
}

fn not_checked() -> StoreError {
    tracing::error!("flag change reached the writer without being checked");
    StoreError::Invalid("internal error: the flag change was not checked".into())
}

/// How often a flag change computed from a revision that moved on before
/// the write (a kill meanwhile, say) is checked again before giving up with
/// a conflict.
const MAX_CHECK_ATTEMPTS: usize = 3;

/// For flag operations: compiles the definition `op` would write on the
/// blocking pool (never the writer thread: see `store::flags`) and attaches
/// it, refusing warnings nobody accepted: `flags apply` needs every warning
/// accepted (`accept_warnings` now, or recorded in the request being
/// approved); `flags set` may keep the warnings of the revision it changes
/// but bring no new ones. Other operations pass through.
async fn check(ctx: &Ctx, mut op: Op, accept_warnings: bool) -> Result<Op, FlagError> {
    match &mut op {
        Op::FlagApply {
            definition,
            accepted_warnings,
            checked,
            ..
        } => {
            let c = crate::flags::check_definition(definition.clone()).await?;
            if accept_warnings {
                *accepted_warnings = c.warnings().to_vec();
            }
            let unaccepted: Vec<String> = c
                .warnings()
                .iter()
                .filter(|w| !accepted_warnings.contains(w))
                .cloned()
                .collect();
            if !unaccepted.is_empty() {
                return Err(FlagError::Warnings(unaccepted));
            }
            *checked = Some(Arc::new(c));
        }
        Op::FlagSet {
            environment,
            key,
            state,
            default_variant,
            checked,
        } => {
            let c = store::flags::check_set(
                &ctx.store,
                environment,
                key,
                state.as_deref(),
                default_variant.as_deref(),
            )
            .await?;
            if !c.new_warnings().is_empty() {
                return Err(FlagError::Warnings(c.new_warnings().to_vec()));
            }
            *checked = Some(Arc::new(c));
        }
        _ => {}
    }
    Ok(op)
}

fn diff_value(before: &Value, after: &Value) -> Value {
    serde_json::to_value(common::diff::diff(before, after)).unwrap_or(Value::Null)
}

fn flag_executed(change: store::flags::FlagChange, rev: Option<Revision>) -> Executed {
    Executed {
        revision: rev,
        diff: serde_json::to_value(&change.diff).unwrap_or(Value::Null),
        output: json!({
            "revision": change.revision,
            "changed": change.changed,
            "diff": change.diff,
            "diff_text": common::diff::render(&change.diff),
            "warnings": change.warnings,
        }),
        changed: change.changed,
    }
}

/// The outcome of [`submit`].
#[derive(Debug)]
pub enum Submitted {
    /// Done at once (no approval needed, or nothing to change).
    Applied(Executed),
    /// Waiting for a second person.
    Pending(Box<Approval>),
}

/// Errors of the approval steps, mapped to API answers by the callers.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Forbidden(String),
    #[error("a reason is required for this change")]
    ReasonRequired,
}

impl From<ApprovalError> for crate::kernel::ApiError {
    fn from(e: ApprovalError) -> Self {
        match e {
            ApprovalError::Store(s) => s.into(),
            ApprovalError::Forbidden(m) => crate::kernel::ApiError::forbidden(m),
            ApprovalError::ReasonRequired => crate::kernel::ApiError::new(
                crate::kernel::ErrorCode::ReasonRequired,
                "a reason is required for this change",
            ),
        }
    }
}

/// The policy in force: the one saved from the console, else the config's.
pub async fn policy(ctx: &Ctx) -> store::Result<Policy> {
    let saved = ctx.store.read(store::approvals::policy).await?;
    Ok(saved
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_else(|| ctx.approval_defaults.clone()))
}

/// Saves a new policy; this too waits for a second admin when one exists.
pub async fn set_policy(
    ctx: &Ctx,
    actor: &Actor,
    new: Policy,
    reason: &str,
) -> store::Result<Submitted> {
    let op = Op::PolicySet {
        policy: new,
        config_default: ctx.approval_defaults.clone(),
    };
    submit(ctx, actor, op, reason).await
}

/// Runs `op` now, or records a pending request when the policy asks for a
/// second person and somebody else could give it. (A collector with a single
/// admin has nobody to ask: its changes apply at once, and the request-free
/// audit entry shows that. Add a second admin to get four eyes.)
pub async fn submit(ctx: &Ctx, actor: &Actor, op: Op, reason: &str) -> store::Result<Submitted> {
    submit_checked(ctx, actor, op, false, reason)
        .await
        .map_err(FlagError::into_store)
}

/// [`submit`], with flag changes first [`check`]ed (`accept_warnings` for
/// `flags apply --accept-warnings`), and checked again when the revision
/// they were computed from moved on before the write.
pub async fn submit_checked(
    ctx: &Ctx,
    actor: &Actor,
    op: Op,
    accept_warnings: bool,
    reason: &str,
) -> Result<Submitted, FlagError> {
    let mut attempt = 1;
    loop {
        let checked = check(ctx, op.clone(), accept_warnings).await?;
        match submit_once(ctx, actor, checked, reason).await {
            Err(e) if store::flags::is_stale(&e) && attempt < MAX_CHECK_ATTEMPTS => {
                tracing::debug!(
                    attempt,
                    "flag change checked against an old revision, again"
                );
                attempt += 1;
            }
            other => return Ok(other?),
        }
    }
}

async fn submit_once(ctx: &Ctx, actor: &Actor, op: Op, reason: &str) -> store::Result<Submitted> {
    let policy = policy(ctx).await?;
    let actor = actor.clone();
    let reason = reason.to_string();
    let now = ctx.clock.now_ms();
    let out = ctx
        .store
        .write(move |tx| {
            let needs = policy.requires(&op)
                && !store::users::others_with_role(tx, &actor.person, op.required_role())?.is_empty();
            if !needs {
                return Ok(Submitted::Applied(execute(tx, &op, &actor, &reason)?));
            }
            let preview = store::dry_run(tx, |tx| execute(tx, &op, &actor, &reason))?;
            if !preview.changed {
                return Ok(Submitted::Applied(preview));
            }
            // a saved policy is bounded when saved; clamp an older one too
            let expire_after_ms = policy
                .expire_after_ms
                .clamp(MIN_EXPIRE_AFTER.as_millis() as i64, MAX_EXPIRE_AFTER.as_millis() as i64);
            let expires = common::time::add_ms(now, expire_after_ms);
            let payload = serde_json::to_value(&op)?;
            let a = store::approvals::create(tx, &actor, op.action(), &op.target(), &payload, &preview.diff, &reason, expires)?;
            tracing::info!(id = %a.id, action = %a.action, target = %a.target, by = %a.requested_by, "change waits for approval");
            Ok(Submitted::Pending(Box::new(a)))
        })
        .await?;
    if let Submitted::Applied(Executed {
        revision: Some(rev),
        ..
    }) = &out
    {
        ctx.hub.publish(rev);
    }
    Ok(out)
}

/// The outcome of [`approve`].
#[derive(Debug)]
pub enum Decided {
    Approved(Approval, Executed),
    Rejected(Approval),
    /// It had expired; now recorded as such.
    Expired(Approval),
}

/// Approves request `id` as `approver`. The change runs in the same
/// transaction.
pub async fn approve(
    ctx: &Ctx,
    approver: &Actor,
    id: &str,
    reason: &str,
) -> Result<Decided, ApprovalError> {
    decide(ctx, approver, id, reason, true).await
}

/// Rejects (or, for the requester, withdraws) request `id`; a rejection
/// needs a reason.
pub async fn reject(
    ctx: &Ctx,
    approver: &Actor,
    id: &str,
    reason: &str,
) -> Result<Decided, ApprovalError> {
    if reason.trim().is_empty() {
        return Err(ApprovalError::ReasonRequired);
    }
    decide(ctx, approver, id, reason, false).await
}

async fn decide(
    ctx: &Ctx,
    approver: &Actor,
    id: &str,
    reason: &str,
    approved: bool,
) -> Result<Decided, ApprovalError> {
    let mut attempt = 1;
    loop {
        let checked = if approved {
            checked_request(ctx, id).await?
        } else {
            None
        };
        let out = decide_once(ctx, approver, id, reason, approved, checked);
        match out.await {
            Err(ApprovalError::Store(e))
                if store::flags::is_stale(&e) && attempt < MAX_CHECK_ATTEMPTS =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The flag change of pending request `id`, [`check`]ed off the writer
/// (with the warnings the requester accepted), for the approval to run;
/// `None` for other requests (and for those `decide_once` refuses anyway).
async fn checked_request(ctx: &Ctx, id: &str) -> Result<Option<Op>, ApprovalError> {
    let id = id.to_string();
    let a = ctx
        .store
        .read(move |c| store::approvals::get(c, &id))
        .await?;
    let Some(a) = a.filter(|a| a.state == "pending") else {
        return Ok(None);
    };
    let Ok(op) = serde_json::from_value::<Op>(a.payload.clone()) else {
        return Ok(None);
    };
    if !matches!(op, Op::FlagSet { .. } | Op::FlagApply { .. }) {
        return Ok(None);
    }
    match check(ctx, op, false).await {
        Ok(op) => Ok(Some(op)),
        Err(FlagError::Warnings(w)) => Err(StoreError::Conflict(format!(
            "{} would now bring warnings the request did not accept ({}); reject it and request the change again",
            a.target,
            w.join("; ")
        ))
        .into()),
        Err(e) => Err(e.into_store().into()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn decide_once(
    ctx: &Ctx,
    approver: &Actor,
    id: &str,
    reason: &str,
    approved: bool,
    checked: Option<Op>,
) -> Result<Decided, ApprovalError> {
    let approver = approver.clone();
    let id = id.to_string();
    let reason = reason.to_string();
    let clock_now = ctx.clock.now_ms();
    let out = ctx
        .store
        .write(move |tx| -> store::Result<Result<Decided, String>> {
            let a = store::approvals::get(tx, &id)?
                .ok_or_else(|| StoreError::NotFound(format!("no approval request {id:?}")))?;
            if a.state != "pending" {
                return Err(StoreError::Conflict(format!("request {id} is already {}", a.state)));
            }
            let now = clock_now;
            if a.expires_ms <= now {
                store::approvals::expire_due(tx, &Actor::system("system:approvals"), now)?;
                let a = store::approvals::get(tx, &id)?.unwrap_or(a);
                return Ok(Ok(Decided::Expired(a)));
            }
            let op: Op = serde_json::from_value(a.payload.clone())
                .map_err(|e| StoreError::Invalid(format!("request {id} cannot be read: {e}")))?;
            // the same payload (a request's payload never changes), with its
            // flag definition compiled off the writer
            let op = checked.unwrap_or(op);
            // persons, not names: a token counts as its owner
            let is_own = a.requested_person == approver.person;
            if approved && is_own {
                return Ok(Err(format!(
                    "{} cannot approve their own request: another person must approve it",
                    approver.person
                )));
            }
            let needed = op.required_role();
            // a requester may always withdraw (reject) their own request
            if !approver.role.allows(needed) && (!is_own || approved) {
                return Ok(Err(format!(
                    "deciding on {} needs the {} role; {} has {}",
                    a.action,
                    needed.as_str(),
                    approver.name,
                    approver.role.as_str()
                )));
            }
            // (every refusal comes before anything is written: an `Ok(Err)`
            // commits the transaction)
            // a requester who lost the role since asking cannot get the
            // change through someone else
            if approved {
                let person_role = store::users::credentials(tx, &a.requested_person)?.map(|c| c.0);
                if !person_role.is_some_and(|r| r.allows(needed)) {
                    return Ok(Err(format!(
                        "{} no longer has the {} role this change needs; reject the request",
                        a.requested_person,
                        needed.as_str()
                    )));
                }
                // a request made with a token stands only while the token does
                if let Some(token) = &a.requested_token_id {
                    if !store::tokens::api_token_usable(tx, token)? {
                        return Ok(Err(format!(
                            "the API token {token} that made request {id} was revoked or expired; reject the request"
                        )));
                    }
                }
            }
            store::approvals::decide(tx, &approver, &a, approved, &reason)?;
            if !approved {
                let a = store::approvals::get(tx, &id)?.unwrap_or(a);
                return Ok(Ok(Decided::Rejected(a)));
            }
            let note = format!("{} (approved by {} in {})", a.reason, approver.name, a.id);
            let exec = execute(tx, &op, &a.requester(), &note)?;
            if exec.diff != a.diff {
                return Err(StoreError::Conflict(format!(
                    "{} changed since request {id} was made, so it would no longer do what was approved; reject it and request the change again",
                    a.target
                )));
            }
            let a = store::approvals::get(tx, &id)?.unwrap_or(a);
            Ok(Ok(Decided::Approved(a, exec)))
        })
        .await?;
    let decided = out.map_err(ApprovalError::Forbidden)?;
    if let Decided::Approved(
        _,
        Executed {
            revision: Some(rev),
            ..
        },
    ) = &decided
    {
        ctx.hub.publish(rev);
    }
    Ok(decided)
}

/// Expires overdue requests (run periodically).
pub async fn expire_due(ctx: &Ctx) -> store::Result<usize> {
    let now = ctx.clock.now_ms();
    ctx.store
        .write(move |tx| store::approvals::expire_due(tx, &Actor::system("system:approvals"), now))
        .await
}
