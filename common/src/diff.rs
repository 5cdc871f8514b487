//! A small structural JSON diff: the list of changes (JSON pointer, before,
//! after) between two documents. The audit log stores it for every mutation
//! and `flags apply` prints it before anything takes effect.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// JSON pointer (RFC 6901) of the changed member.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

impl Change {
    pub fn kind(&self) -> &'static str {
        match (&self.before, &self.after) {
            (None, Some(_)) => "added",
            (Some(_), None) => "removed",
            _ => "changed",
        }
    }
}

/// Differences between `before` and `after`; objects are compared member by
/// member, anything else (arrays included) as a whole value.
pub fn diff(before: &Value, after: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    walk(String::new(), Some(before), Some(after), &mut out);
    out
}

fn walk(path: String, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<Change>) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                walk(format!("{path}/{}", escape(k)), x.get(k), y.get(k), out);
            }
        }
        (Some(x), Some(y)) if x == y => {}
        (None, None) => {}
        (x, y) => out.push(Change {
            path: if path.is_empty() { "/".into() } else { path },
            before: x.cloned(),
            after: y.cloned(),
        }),
    }
}

fn escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

/// One line per change, for terminals: `+ /flags/new = {...}`.
pub fn render(changes: &[Change]) -> String {
    let mut s = String::new();
    for c in changes {
        match (&c.before, &c.after) {
            (None, Some(a)) => s.push_str(&format!("+ {} = {}\n", c.path, a)),
            (Some(b), None) => s.push_str(&format!("- {} (was {})\n", c.path, b)),
            (Some(b), Some(a)) => s.push_str(&format!("~ {}: {} -> {}\n", c.path, b, a)),
            (None, None) => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_changes_are_pointed_at() {
        let a = json!({"flags": {"x": {"state": "ENABLED", "variants": {"on": true}}, "gone": {}}});
        let b =
            json!({"flags": {"x": {"state": "DISABLED", "variants": {"on": true}}, "new/one": 1}});
        let d = diff(&a, &b);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].path, "/flags/gone");
        assert_eq!(d[0].kind(), "removed");
        assert_eq!(d[1].path, "/flags/new~1one");
        assert_eq!(d[1].kind(), "added");
        assert_eq!(d[2].path, "/flags/x/state");
        assert_eq!(d[2].after, Some(json!("DISABLED")));
        assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn scalar_root_change() {
        let d = diff(&json!(1), &json!(2));
        assert_eq!(d[0].path, "/");
        assert!(render(&d).contains("~ /: 1 -> 2"));
    }
}
