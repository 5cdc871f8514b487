//! Secrets and passwords (roles and callers live in `kernel::caller`,
//! re-exported here for the store). Every secret (API tokens, enrollment tokens,
//! agent credentials) is random, carries a recognisable prefix so secret
//! scanners can spot a leak, and is stored only as a SHA-256 hash (they are
//! high-entropy, so a slow hash buys nothing). User passwords use argon2id.

use rand::RngCore;
use sha2::{Digest, Sha256};

pub use crate::kernel::caller::{token_actor_name, Actor, Role};

/// Kinds of secret, each with its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    ApiToken,
    EnrollToken,
    AgentCredential,
    Session,
}

impl SecretKind {
    pub fn prefix(&self) -> &'static str {
        match self {
            SecretKind::ApiToken => "opsp_",
            SecretKind::EnrollToken => "opse_",
            SecretKind::AgentCredential => "opsa_",
            SecretKind::Session => "opss_",
        }
    }
}

/// A new secret: `(id, full secret)`. The id (first 8 characters after the
/// prefix) is safe to show and log; the secret is shown once.
pub fn new_secret(kind: SecretKind) -> (String, String) {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    let body = hex::encode(bytes);
    let id = body[..8].to_string();
    (id, format!("{}{}", kind.prefix(), body))
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.trim().as_bytes()))
}

/// A random password of 20 characters for `init` and `users add`.
pub fn new_password() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..20)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash password: {e}"))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash)
        .map(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Longest expiry of an API or enrollment token.
pub const MAX_TOKEN_EXPIRY: std::time::Duration =
    std::time::Duration::from_millis(10 * common::config::YEAR_MS);

/// Parses `"24h"`-style expiry (or `"never"`) into milliseconds since the
/// epoch, refusing anything longer than [`MAX_TOKEN_EXPIRY`].
pub fn expiry_ms(expires: Option<&str>) -> Result<Option<i64>, String> {
    match expires.map(str::trim) {
        None => Ok(None),
        Some("never") => Ok(None),
        Some(s) => {
            let d = common::config::parse_duration_max(s, MAX_TOKEN_EXPIRY, "token expiry")?;
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            Ok(Some(common::time::add_ms(common::time::now_ms(), ms)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_prefix_and_hash_stably() {
        let (id, s) = new_secret(SecretKind::ApiToken);
        assert!(s.starts_with("opsp_"));
        assert_eq!(&s[5..13], id);
        assert_eq!(hash_secret(&s), hash_secret(&format!("{s}\n")));
        assert_ne!(new_secret(SecretKind::ApiToken).1, s);
    }

    #[test]
    fn expiry_is_bounded() {
        assert_eq!(expiry_ms(None), Ok(None));
        assert_eq!(expiry_ms(Some("never")), Ok(None));
        assert!(expiry_ms(Some("10y")).unwrap().is_some());
        for bad in ["10000y", "9223372036854775s", "11y", "soon"] {
            assert!(expiry_ms(Some(bad)).is_err(), "{bad}");
        }
        assert!(expiry_ms(Some("10000y"))
            .unwrap_err()
            .contains("at most 10y"));
    }

    #[test]
    fn passwords_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }
}
