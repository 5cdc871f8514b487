//! Page chrome and the pieces every page shares: the layout with navigation,
//! diffs as tables, flag targeting as readable rules, times as "3 min ago".
//! maud escapes everything interpolated, so no user text becomes markup.

use super::Session;
use crate::auth::Role;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

pub struct Chrome<'a> {
    pub session: &'a Session,
    pub pending_approvals: i64,
}

/// The navigation bar: every console page whose route declares a `nav`
/// entry (`kernel::route`), in their order; read once from the tables.
fn nav() -> &'static [(&'static str, &'static str, &'static str)] {
    static NAV: std::sync::OnceLock<Vec<(&'static str, &'static str, &'static str)>> =
        std::sync::OnceLock::new();
    NAV.get_or_init(|| {
        let mut entries: Vec<_> = crate::routes::all()
            .into_iter()
            .filter_map(|r| r.nav.map(|n| (n.order, n.key, r.path, n.label)))
            .collect();
        entries.sort();
        entries
            .into_iter()
            .map(|(_, key, path, label)| (key, path, label))
            .collect()
    })
}

fn head(title: &str) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) " · Opsplane" }
        link rel="stylesheet" href="/console/static/console.css";
        script src="/console/static/console.js" defer {}
    }
}

pub fn layout(c: &Chrome<'_>, active: &str, title: &str, body: Markup) -> Markup {
    let s = c.session;
    html! {
        (DOCTYPE)
        html lang="en" {
            head { (head(title)) }
            body {
                header.top {
                    a.brand href="/console/" { "Opsplane" }
                    nav {
                        @for (key, href, label) in nav() {
                            a href=(href) class=@if *key == active { "active" } {
                                (label)
                                @if *key == "approvals" && c.pending_approvals > 0 {
                                    " " span.count { (c.pending_approvals) }
                                }
                            }
                        }
                    }
                    div.me {
                        span.who { (s.actor.name) } " "
                        span class={ "role role-" (s.actor.role.as_str()) } { (s.actor.role.as_str()) }
                        form.inline method="post" action="/console/logout" {
                            (csrf(s))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

pub fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

pub fn error_page(title: &str, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { (head(title)) }
            body.narrow {
                main.card.error-page {
                    h1 { (title) }
                    p { (message) }
                    p { a href="/console/" { "Back to the console" } }
                }
            }
        }
    }
}

pub fn login_page(next: &str, error: Option<&str>, username: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { (head("Sign in")) }
            body.narrow {
                main.card.login {
                    h1 { "Opsplane console" }
                    @if let Some(e) = error { p.flash.bad role="alert" { (e) } }
                    form method="post" action="/console/login" {
                        input type="hidden" name="next" value=(next);
                        label { "User name" input name="username" autocomplete="username" required autofocus value=(username); }
                        label { "Password" input name="password" type="password" autocomplete="current-password" required; }
                        button.primary type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

pub fn notice(text: Option<&str>) -> Markup {
    html! { @if let Some(t) = text { p.flash.good role="status" { (t) } } }
}

/// A diff (list of `{path, before, after}`) as a table. A whole object that
/// appeared or went away is shown member by member ("created with ...").
pub fn diff_table(diff: &Value) -> Markup {
    let mut rows: Vec<(String, Option<Value>, Option<Value>)> = Vec::new();
    for c in diff.as_array().into_iter().flatten() {
        let path = c
            .get("path")
            .and_then(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let before = c.get("before").filter(|v| !v.is_null()).cloned();
        let after = c.get("after").filter(|v| !v.is_null()).cloned();
        match (&before, &after) {
            (None, Some(Value::Object(o))) | (Some(Value::Object(o)), None) if !o.is_empty() => {
                let added = after.is_some();
                for (k, v) in o {
                    let p = format!(
                        "{}/{}",
                        path.trim_end_matches('/'),
                        k.replace('~', "~0").replace('/', "~1")
                    );
                    if added {
                        rows.push((p, None, Some(v.clone())));
                    } else {
                        rows.push((p, Some(v.clone()), None));
                    }
                }
            }
            _ => rows.push((path, before, after)),
        }
    }
    html! {
        @if rows.is_empty() {
            p.muted { "No changes." }
        } @else {
            div.scroll {
                table.diff {
                    thead { tr { th { "What" } th { "Before" } th { "After" } } }
                    tbody {
                        @for (path, before, after) in &rows {
                            @let kind = match (before, after) { (None, Some(_)) => "added", (Some(_), None) => "removed", _ => "changed" };
                            tr class=(kind) {
                                td.path { code { (readable_path(path)) } }
                                td.before { @if let Some(b) = before { (value_block(b)) } @else { span.muted { "(none)" } } }
                                td.after { @if let Some(a) = after { (value_block(a)) } @else { span.muted { "(removed)" } } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `2026-11-23T01:53:19.605Z` → `2026-11-23 01:53:19 UTC`.
pub fn short_time(iso: &str) -> String {
    match iso.get(..19) {
        Some(s) if iso.len() > 19 => format!("{} UTC", s.replace('T', " ")),
        _ => iso.to_string(),
    }
}

/// `/flags/new-checkout/state` → `flags › new-checkout › state`.
pub fn readable_path(p: &str) -> String {
    if p == "/" || p.is_empty() {
        return "(whole)".into();
    }
    p.trim_start_matches('/')
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect::<Vec<_>>()
        .join(" › ")
}

pub fn value_block(v: &Value) -> Markup {
    let text = match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) | Value::Array(_) => serde_json::to_string_pretty(v).unwrap_or_default(),
        other => other.to_string(),
    };
    let text = if text.len() > 2000 {
        format!("{}…", &text[..text.floor_char_boundary(2000)])
    } else {
        text
    };
    html! { pre.value { (text) } }
}

/// JsonLogic targeting as text a person can read:
/// `if targetingKey starts with "beta-" then "on" else "off"`.
pub fn targeting(v: &Value) -> String {
    fn val(v: &Value) -> String {
        match v {
            Value::String(s) => format!("{s:?}"),
            Value::Object(o) if o.len() == 1 => expr(v),
            Value::Array(a) => format!("[{}]", a.iter().map(val).collect::<Vec<_>>().join(", ")),
            other => other.to_string(),
        }
    }
    fn expr(v: &Value) -> String {
        let Some(o) = v.as_object().filter(|o| o.len() == 1) else {
            return val(v);
        };
        let (op, args) = o
            .iter()
            .next()
            .map(|(k, a)| (k.as_str(), a))
            .unwrap_or(("", &Value::Null));
        let list: Vec<Value> = match args {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        let bin = |word: &str| -> String {
            if list.len() == 2 {
                format!("{} {word} {}", val(&list[0]), val(&list[1]))
            } else {
                format!(
                    "{op}({})",
                    list.iter().map(val).collect::<Vec<_>>().join(", ")
                )
            }
        };
        match op {
            "var" => list
                .first()
                .and_then(|x| x.as_str())
                .unwrap_or("?")
                .to_string(),
            "$ref" => format!("rule {}", val(&list[0])),
            "if" | "?:" => {
                let mut s = String::new();
                let mut i = 0;
                while i + 1 < list.len() {
                    if i > 0 {
                        s.push_str(" else ");
                    }
                    s.push_str(&format!("if {} then {}", expr(&list[i]), val(&list[i + 1])));
                    i += 2;
                }
                if i < list.len() {
                    s.push_str(&format!(" else {}", val(&list[i])));
                }
                s
            }
            "and" | "or" => format!(
                "({})",
                list.iter()
                    .map(expr)
                    .collect::<Vec<_>>()
                    .join(if op == "and" { " and " } else { " or " })
            ),
            "!" => format!("not {}", expr(list.first().unwrap_or(&Value::Null))),
            "==" | "===" => bin("is"),
            "!=" | "!==" => bin("is not"),
            "<" | "<=" | ">" | ">=" => bin(op),
            "in" => bin("in"),
            "starts_with" => bin("starts with"),
            "ends_with" => bin("ends with"),
            "sem_ver" if list.len() == 3 => format!(
                "{} {} {} (semver)",
                val(&list[0]),
                list[1].as_str().unwrap_or("?"),
                val(&list[2])
            ),
            "fractional" => {
                let (by, buckets) = match list.first() {
                    Some(Value::Array(_)) | None => ("targetingKey".to_string(), &list[..]),
                    Some(first) => (val(first), &list[1..]),
                };
                let parts: Vec<String> = buckets
                    .iter()
                    .filter_map(|b| b.as_array())
                    .map(|b| {
                        format!(
                            "{} {}%",
                            val(b.first().unwrap_or(&Value::Null)),
                            b.get(1).map(|w| w.to_string()).unwrap_or_default()
                        )
                    })
                    .collect();
                format!("split by {by}: {}", parts.join(", "))
            }
            _ => format!(
                "{op}({})",
                list.iter().map(val).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    if v.as_object().is_some_and(|o| o.is_empty()) || v.is_null() {
        return String::new();
    }
    expr(v)
}

/// "12 s ago", "3 min ago", "2 h ago", "4 d ago".
pub fn ago(ms: i64, now_ms: i64) -> String {
    let s = ((now_ms - ms) / 1000).max(0);
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

pub fn time(ms: i64, now_ms: i64) -> Markup {
    let iso = common::time::rfc3339(ms);
    html! { time datetime=(iso) title=(short_time(&iso)) { (ago(ms, now_ms)) } }
}

pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn role_select(name: &str, selected: Role) -> Markup {
    html! {
        select name=(name) {
            @for r in Role::ALL {
                option value=(r.as_str()) selected[r == selected] { (r.as_str()) }
            }
        }
    }
}

/// Raw markup known to be safe (constant strings only).
#[allow(dead_code)]
pub fn raw(s: &'static str) -> PreEscaped<&'static str> {
    PreEscaped(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targeting_reads_like_a_rule() {
        let t = json!({"if": [{"starts_with": [{"var": "targetingKey"}, "beta-"]}, "on", "off"]});
        assert_eq!(
            targeting(&t),
            r#"if targetingKey starts with "beta-" then "on" else "off""#
        );
        let t = json!({"fractional": [["red", 50], ["blue", 50]]});
        assert_eq!(
            targeting(&t),
            r#"split by targetingKey: "red" 50%, "blue" 50%"#
        );
        let t = json!({"if": [{"and": [{"==": [{"var": "region"}, "eu"]}, {"sem_ver": [{"var": "version"}, ">=", "1.2.0"]}]}, "on", "off"]});
        assert_eq!(
            targeting(&t),
            r#"if (region is "eu" and version >= "1.2.0" (semver)) then "on" else "off""#
        );
        assert_eq!(targeting(&json!({})), "");
    }

    #[test]
    fn diff_rows_escape_user_text() {
        let d = json!([{"path": "/flags/<b>x</b>", "before": "<script>", "after": "ok"}]);
        let html = diff_table(&d).into_string();
        assert!(!html.contains("<script>") && html.contains("&lt;script&gt;"));
        assert!(!html.contains("<b>x</b>"));
    }
}
