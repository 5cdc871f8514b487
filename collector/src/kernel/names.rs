//! The one rule for names: users, API tokens, environments, services and
//! kill switches. 1-64 ASCII letters, digits, `-`, `_`, `.`, `@` (never a
//! colon: `token:` actors cannot pass for users).

/// Checks a name; the error is the message shown to the caller.
pub fn check(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        return Err(format!(
            "invalid name {name:?}: use 1-64 letters, digits, '-', '_', '.', '@'"
        ));
    }
    Ok(())
}

/// Whether `name` is valid.
pub fn is_valid(name: &str) -> bool {
    check(name).is_ok()
}

/// [`check`] as an API error (`INVALID`, 400).
pub fn validate(name: &str) -> super::ApiResult<()> {
    check(name).map_err(|m| super::ApiError::new(super::ErrorCode::Invalid, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["prod", "a", "web-1", "x_y.z", "alice@example.com"] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in ["", "a b", "token:x", "é", &"x".repeat(65)] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
