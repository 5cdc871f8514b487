//! Sign-in and sign-out, and the login throttle.
//!
//! The throttle counts an attempt *before* its password is hashed: each
//! attempt first reserves one of the account's attempts (atomically, under
//! one lock), so a burst of concurrent guesses gets at most
//! [`MAX_PER_ACCOUNT`] hashes and the rest are refused at once with
//! `Retry-After`. Reaching the limit locks the account for [`BASE_LOCK_MS`],
//! doubling with every further lock (up to [`MAX_LOCK_MS`]); after a lock a
//! single failure locks again. While an account is locked even the right
//! password is refused, so guessing gains nothing. Hashing itself is
//! bounded by a semaphore ([`MAX_CONCURRENT_HASHES`]).
//!
//! The source address is only a secondary signal: behind the recommended
//! TLS proxy every user shares one address, so a busy address refuses only
//! accounts that already failed recently, never a user's first attempt.
//! The counts live in memory: a restart clears them (acceptable: a restart
//! is slow and visible in the logs). Time comes from the collector's
//! injectable clock (`kernel::clock`).

use super::{
    render, secure, session_cookie, source_of, user_agent_of, PageError, PageResult, Session,
};
use crate::access::auth::{hash_secret, new_secret, verify_password, SecretKind};
use crate::kernel::{Actor, ClockHandle, ErrorCode, Role};
use crate::store;
use crate::Ctx;
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Failed attempts are remembered this long.
pub const WINDOW_MS: i64 = 15 * 60 * 1000;
/// Attempts per account (failed or still being checked) before it is locked.
pub const MAX_PER_ACCOUNT: usize = 5;
/// Failures from one address within the window after which that address
/// may no longer retry accounts that failed recently.
pub const MAX_PER_ADDRESS: usize = 20;
/// The first lock of an account; each further lock doubles it.
pub const BASE_LOCK_MS: i64 = 60 * 1000;
/// The longest lock.
pub const MAX_LOCK_MS: i64 = 60 * 60 * 1000;
/// Locks are forgotten after this long without a failure.
const FORGET_LOCKS_MS: i64 = 24 * 3600 * 1000;
/// Password hashes computed at once (argon2 takes ~1 s of CPU each).
pub const MAX_CONCURRENT_HASHES: usize = 2;
/// How long an attempt waits for a hashing slot before "busy".
const HASH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Bound on the number of remembered keys (memory stays bounded under a flood).
const MAX_KEYS: usize = 50_000;

#[derive(Default)]
struct Account {
    /// Failures within the window (none while a lock is counted in `locks`).
    failures: Vec<i64>,
    /// Attempts reserved and still being checked.
    in_flight: usize,
    locked_until_ms: i64,
    /// Locks so far (drives the backoff).
    locks: u32,
    last_failure_ms: i64,
}

impl Account {
    fn prune(&mut self, now_ms: i64) {
        self.failures.retain(|t| now_ms - t < WINDOW_MS);
        if self.locks > 0
            && now_ms >= self.locked_until_ms
            && now_ms - self.last_failure_ms > FORGET_LOCKS_MS
        {
            self.locks = 0;
        }
    }

    /// Attempts allowed at once: after a lock, one at a time.
    fn budget(&self) -> usize {
        if self.locks > 0 {
            1
        } else {
            MAX_PER_ACCOUNT
        }
    }

    fn idle(&self) -> bool {
        self.in_flight == 0 && self.failures.is_empty() && self.locks == 0
    }
}

#[derive(Default)]
struct Counts {
    accounts: HashMap<String, Account>,
    addresses: HashMap<String, Vec<i64>>,
}

/// Why an attempt was refused before any hashing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after_s: i64,
    /// "this account" or "your address"
    pub what: &'static str,
}

pub struct Limiter {
    counts: Mutex<Counts>,
    clock: Arc<ClockHandle>,
    hashing: tokio::sync::Semaphore,
}

impl Limiter {
    /// A throttle reading the time from `clock` (the collector's, `Ctx::clock`).
    pub fn new(clock: Arc<ClockHandle>) -> Self {
        Limiter {
            counts: Mutex::default(),
            clock,
            hashing: tokio::sync::Semaphore::new(MAX_CONCURRENT_HASHES),
        }
    }
}

/// One reserved attempt; dropping it unfinished (the client went away)
/// gives the attempt back without counting a failure.
pub struct Reservation<'a> {
    limiter: &'a Limiter,
    user: String,
    addr: String,
    finished: bool,
}

impl Reservation<'_> {
    /// Records the attempt's outcome.
    pub fn finish(mut self, ok: bool) {
        self.finished = true;
        self.limiter.finish(&self.user, &self.addr, ok);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let mut c = self
                .limiter
                .counts
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(a) = c.accounts.get_mut(&self.user) {
                a.in_flight = a.in_flight.saturating_sub(1);
            }
        }
    }
}

fn secs_until(until_ms: i64, now_ms: i64) -> i64 {
    ((until_ms - now_ms).max(0) + 999) / 1000
}

impl Limiter {
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Reserves one attempt for `user` from `addr`, or says how long to wait.
    pub fn reserve(&self, user: &str, addr: &str) -> Result<Reservation<'_>, Throttled> {
        let now = self.now_ms();
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.accounts.len() >= MAX_KEYS {
            c.accounts.retain(|_, a| {
                a.prune(now);
                !a.idle()
            });
        }
        if c.addresses.len() >= MAX_KEYS {
            c.addresses
                .retain(|_, v| v.iter().any(|t| now - t < WINDOW_MS));
            if c.addresses.len() >= MAX_KEYS {
                c.addresses.clear();
            }
        }
        let addr_failures = c
            .addresses
            .get_mut(addr)
            .map(|v| {
                v.retain(|t| now - t < WINDOW_MS);
                v.len()
            })
            .unwrap_or(0);
        let oldest_addr_failure = c.addresses.get(addr).and_then(|v| v.first().copied());
        let a = c.accounts.entry(user.to_string()).or_default();
        a.prune(now);
        if a.locked_until_ms > now {
            return Err(Throttled {
                retry_after_s: secs_until(a.locked_until_ms, now),
                what: "this account",
            });
        }
        if a.failures.len() + a.in_flight >= a.budget() {
            // the remaining attempts are being checked right now
            return Err(Throttled {
                retry_after_s: 1,
                what: "this account",
            });
        }
        let failed_recently = !a.failures.is_empty() || a.locks > 0;
        if addr_failures >= MAX_PER_ADDRESS && failed_recently {
            return Err(Throttled {
                retry_after_s: oldest_addr_failure
                    .map_or(1, |t| secs_until(t + WINDOW_MS, now).max(1)),
                what: "your address",
            });
        }
        a.in_flight += 1;
        Ok(Reservation {
            limiter: self,
            user: user.to_string(),
            addr: addr.to_string(),
            finished: false,
        })
    }

    fn finish(&self, user: &str, addr: &str, ok: bool) {
        let now = self.now_ms();
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if !ok {
            let v = c.addresses.entry(addr.to_string()).or_default();
            v.retain(|t| now - t < WINDOW_MS);
            v.push(now);
        }
        let a = c.accounts.entry(user.to_string()).or_default();
        a.in_flight = a.in_flight.saturating_sub(1);
        if ok {
            a.failures.clear();
            a.locks = 0;
            a.locked_until_ms = 0;
            return;
        }
        a.last_failure_ms = now;
        a.failures.push(now);
        if a.failures.len() >= a.budget() {
            a.locks = a.locks.saturating_add(1);
            let lock_ms = BASE_LOCK_MS
                .saturating_mul(1i64 << (a.locks - 1).min(20))
                .min(MAX_LOCK_MS);
            a.locked_until_ms = now.saturating_add(lock_ms);
            a.failures.clear();
            tracing::warn!(user = %user, lock_ms, "console account locked after failed sign-ins");
        }
    }

    /// Waits for a hashing slot (bounded CPU); `None` when busy too long.
    pub async fn hashing_slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::timeout(HASH_WAIT, self.hashing.acquire())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

#[derive(Deserialize, Default)]
pub(super) struct LoginQuery {
    next: Option<String>,
}

/// Only local console paths are followed after login (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/console/") && !n.starts_with("//") && !n.contains('\\') => {
            n.to_string()
        }
        _ => "/console/".into(),
    }
}

pub(super) async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    super::html_response(render::login_page(&safe_next(q.next.as_deref()), None, ""))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

/// Verifies against this when the user does not exist, so the answer takes
/// as long as for a real account.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| crate::auth::hash_password("not a real password").unwrap_or_default())
}

pub(super) async fn login(State(ctx): State<Ctx>, req: Request) -> PageResult {
    let source = source_of(&req);
    let user_agent = user_agent_of(req.headers());
    // a session already held by this browser ends at the next sign-in
    let previous = super::cookie_value(req.headers(), super::COOKIE).map(|c| hash_secret(&c));
    let bytes = axum::body::to_bytes(req.into_body(), super::MAX_FORM_BYTES)
        .await
        .map_err(|_| PageError::new(ErrorCode::PayloadTooLarge, "form too large"))?;
    let form: LoginForm = serde_urlencoded::from_bytes(&bytes)
        .map_err(|_| PageError::bad_request("malformed sign-in form"))?;
    let next = safe_next(form.next.as_deref());
    let username: String = form.username.trim().chars().take(64).collect();
    let anonymous = Actor::user(
        "anonymous",
        Role::Viewer,
        source.clone(),
        user_agent.clone(),
    );
    let refuse = |status: StatusCode, msg: String, retry_after_s: Option<i64>| {
        let mut r = super::html_response(render::login_page(&next, Some(&msg), &username));
        *r.status_mut() = status;
        if let Some(v) =
            retry_after_s.and_then(|s| header::HeaderValue::from_str(&s.to_string()).ok())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    };
    // counted before any hashing: a burst gets at most the account's budget
    let reservation = match ctx.console.limiter.reserve(&username, &source) {
        Ok(r) => r,
        Err(t) => {
            // not audited one by one: a locked-out flood must not fill the
            // audit log (the failures that caused the lock are audited)
            tracing::debug!(user = %username, source = %source, "console sign-in throttled");
            let secs = t.retry_after_s;
            let wait = if secs >= 60 {
                format!("{} min", (secs + 59) / 60)
            } else {
                format!("{secs} s")
            };
            return Ok(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Too many failed sign-in attempts for {}. Try again in {wait}.",
                    t.what
                ),
                Some(secs),
            ));
        }
    };
    let u = username.clone();
    let creds = ctx
        .store
        .read(move |c| store::users::credentials(c, &u))
        .await?;
    let password = form.password;
    let Some(_slot) = ctx.console.limiter.hashing_slot().await else {
        // the reservation is given back uncounted when dropped
        return Ok(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sign-ins at once. Try again in a moment.".into(),
            Some(5),
        ));
    };
    let (role, ok) = {
        let stored = creds.as_ref().map(|c| c.1.clone());
        // hashing (even the dummy's first computation) stays off the runtime
        let ok = tokio::task::spawn_blocking(move || {
            verify_password(&password, stored.as_deref().unwrap_or_else(|| dummy_hash()))
        })
        .await
        .unwrap_or(false);
        (creds.map(|c| c.0), ok)
    };
    drop(_slot);
    let Some(role) = role.filter(|_| ok) else {
        reservation.finish(false);
        let (a, u) = (anonymous, username.clone());
        ctx.store
            .write(move |tx| {
                store::sessions::login_failed(tx, &a, &u, "wrong user name or password")
            })
            .await?;
        tracing::warn!(user = %username, source = %source, "console sign-in failed");
        return Ok(refuse(
            StatusCode::UNAUTHORIZED,
            "Wrong user name or password.".into(),
            None,
        ));
    };
    reservation.finish(true);
    // a new session id at every login (no fixation)
    let (_, sid) = new_secret(SecretKind::Session);
    let (_, csrf) = new_secret(SecretKind::Session);
    let actor = Actor::user(&username, role, source, user_agent);
    let h = hash_secret(&sid);
    ctx.store
        .write(move |tx| {
            if let Some(old) = previous {
                store::sessions::expire(tx, &old)?;
            }
            store::sessions::login(tx, &actor, &h, &csrf)
        })
        .await?;
    tracing::info!(user = %username, role = role.as_str(), "console sign-in");
    let mut resp = Redirect::to(&next).into_response();
    if let Ok(v) = session_cookie(&ctx.console, &sid).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

pub(super) async fn logout(
    State(ctx): State<Ctx>,
    Extension(session): Extension<Session>,
) -> PageResult {
    let (actor, h) = (session.actor.clone(), session.id_hash.clone());
    ctx.store
        .write(move |tx| store::sessions::logout(tx, &actor, &h))
        .await?;
    let resp = Redirect::to("/console/login?signed_out=1").into_response();
    Ok(secure(resp, Some(super::clear_cookie(&ctx.console))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Clock;

    struct Manual(std::sync::atomic::AtomicI64);
    impl Clock for Manual {
        fn now_ms(&self) -> i64 {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[test]
    fn limiter_reserves_before_hashing_backs_off_and_uses_the_address_second() {
        let clock = Arc::new(Manual(1_000_000.into()));
        let handle = Arc::new(ClockHandle::default());
        handle.set(clock.clone());
        let l = Limiter::new(handle);
        let advance = |ms: i64| clock.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
        // a burst: only the budget is reserved, the rest refused at once
        let held: Vec<_> = (0..MAX_PER_ACCOUNT)
            .map(|_| l.reserve("alice", "10.0.0.1").expect("within budget"))
            .collect();
        assert_eq!(
            l.reserve("alice", "10.0.0.1").err().map(|t| t.what),
            Some("this account")
        );
        for r in held {
            r.finish(false);
        }
        // locked, even for the right password, for the base lock
        let t = l.reserve("alice", "10.0.0.9").err().expect("locked");
        assert_eq!(t.retry_after_s, BASE_LOCK_MS / 1000);
        advance(BASE_LOCK_MS);
        // after a lock, one failure locks again, twice as long
        l.reserve("alice", "10.0.0.1").unwrap().finish(false);
        assert_eq!(
            l.reserve("alice", "10.0.0.1").err().unwrap().retry_after_s,
            2 * BASE_LOCK_MS / 1000
        );
        advance(2 * BASE_LOCK_MS);
        l.reserve("alice", "10.0.0.1").unwrap().finish(true);
        // success forgives: the full budget again
        for _ in 0..MAX_PER_ACCOUNT - 1 {
            l.reserve("alice", "10.0.0.1").unwrap().finish(false);
        }
        l.reserve("alice", "10.0.0.1").unwrap().finish(true);
        // a dropped reservation is given back uncounted
        for _ in 0..10 {
            drop(l.reserve("carol", "10.0.0.1").unwrap());
        }
        // many failing accounts from one address (a proxy): users who did
        // not fail still get in; accounts that failed are held back
        for i in 0..MAX_PER_ADDRESS {
            l.reserve(&format!("u{i}"), "10.0.0.2")
                .unwrap()
                .finish(false);
        }
        assert!(l.reserve("fresh", "10.0.0.2").is_ok());
        assert_eq!(
            l.reserve("u0", "10.0.0.2").err().map(|t| t.what),
            Some("your address")
        );
        assert!(l.reserve("u0", "10.0.0.3").is_ok());
    }

    #[test]
    fn only_local_console_paths_are_followed_after_login() {
        assert_eq!(
            safe_next(Some("/console/flags?env=prod")),
            "/console/flags?env=prod"
        );
        assert_eq!(safe_next(Some("https://evil.example/")), "/console/");
        assert_eq!(safe_next(Some("//evil.example/console/")), "/console/");
        assert_eq!(safe_next(Some("/console/\\evil")), "/console/");
        assert_eq!(safe_next(None), "/console/");
    }
}
