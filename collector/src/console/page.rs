//! What every capability's console pages share: the page frame with the
//! pending-approvals count, redirects, the environment picker and tabs, the
//! query every page takes, and flash messages (each capability declares
//! its own, typed, with [`Flash`]). Roles are checked by the route's layer
//! (`console::route_guard`) before a handler runs.

use super::render::{self, layout, Chrome};
use super::{PageError, PageResult, Session};
use crate::kernel::{names, ErrorCode};
use crate::store;
use crate::Ctx;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup};
use serde::Deserialize;

/// The signed-in session, as handlers take it.
pub type S = Extension<Session>;

pub fn html_page(m: Markup) -> Response {
    super::html_response(m)
}

/// A page in the console's frame; `active` is its navigation key.
pub async fn page(ctx: &Ctx, s: &Session, active: &str, title: &str, body: Markup) -> PageResult {
    let pending = ctx.store.read(store::approvals::pending_count).await?;
    let chrome = Chrome {
        session: s,
        pending_approvals: pending,
    };
    Ok(html_page(layout(&chrome, active, title, body)))
}

/// A form's reason: required for every change made in the console.
pub fn require_reason(reason: &str) -> Result<(), PageError> {
    if reason.trim().is_empty() {
        return Err(PageError::new(
            ErrorCode::ReasonRequired,
            "A reason is required: go back and say why.",
        ));
    }
    Ok(())
}

pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

pub fn enc(s: &str) -> String {
    render::url_encode(s)
}

/// Which environment a page shows: the one asked for, else the first known.
pub async fn pick_env(
    ctx: &Ctx,
    asked: Option<String>,
) -> Result<(Vec<String>, Option<String>), PageError> {
    let mut envs = ctx.store.read(store::agents::environments).await?;
    let env = match asked.filter(|e| !e.is_empty()) {
        Some(e) => {
            names::validate(&e)?;
            if !envs.contains(&e) {
                envs.push(e.clone());
            }
            Some(e)
        }
        None => envs.first().cloned(),
    };
    Ok((envs, env))
}

pub fn env_tabs(
    base: &str,
    envs: &[String],
    current: Option<&str>,
    protected: &[String],
) -> Markup {
    html! {
        nav.tabs aria-label="Environment" {
            @for e in envs {
                a href={ (base) "?env=" (enc(e)) } class=@if Some(e.as_str()) == current { "active" } {
                    (e)
                    @if protected.contains(e) { " " span.lock title="protected: flag changes need a second person" { "protected" } }
                }
            }
        }
    }
}

/// The query every page takes: the environment (and service) shown, and
/// the outcome of the form that led here (`done`, `name`).
#[derive(Deserialize, Default)]
pub struct EnvQ {
    pub env: Option<String>,
    pub service: Option<String>,
    pub done: Option<String>,
    pub name: Option<String>,
}

/// A flash message: the outcome of a console form, sent back to a page as
/// `?done=CODE&name=NAME`. Each capability declares its own as an enum.
pub trait Flash: Copy + 'static {
    const ALL: &'static [Self];
    fn code(self) -> &'static str;
    /// The message shown; `name` is a valid name or empty.
    fn text(self, name: &str) -> String;
}

/// The flash message of `F` that `q` asks for, if any.
pub fn flash<F: Flash>(q: &EnvQ) -> Option<String> {
    let done = q.done.as_deref()?;
    let f = F::ALL.iter().find(|f| f.code() == done)?;
    let name = q
        .name
        .as_deref()
        .filter(|n| names::is_valid(n))
        .unwrap_or_default();
    Some(f.text(name))
}

/// The page's notice for its own flash messages (`F`) and those of an
/// approvable change (`approvals::console::Done`: nothing changed).
pub fn notice<F: Flash>(q: &EnvQ) -> Markup {
    let text = flash::<F>(q).or_else(|| flash::<crate::approvals::console::Done>(q));
    html! { (render::notice(text.as_deref())) }
}

/// Declares a capability's flash messages: an enum implementing [`Flash`].
macro_rules! flashes {
    ($(#[$m:meta])* pub enum $name:ident { $($variant:ident = $code:literal => |$n:ident| $text:expr,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant,)* }
        impl $crate::console::page::Flash for $name {
            const ALL: &'static [$name] = &[$($name::$variant,)*];
            fn code(self) -> &'static str {
                match self { $($name::$variant => $code,)* }
            }
            #[allow(unused_variables)]
            fn text(self, name: &str) -> String {
                match self { $($name::$variant => { let $n = name; $text })* }
            }
        }
    };
}
pub(crate) use flashes;
