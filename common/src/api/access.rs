//! Access: who is calling (`/whoami`), console users (`/users`) and API
//! tokens (`/tokens`). Creating a user or a token and changing a role may
//! wait for a second person ([`Submitted`]); the secret shown once (a
//! generated password, a token) comes with either answer.

use super::Submitted;
use serde::{Deserialize, Serialize};

/// What a person or token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Responder,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Responder, Role::Operator, Role::Admin];

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Responder => "responder",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn allows(&self, needed: Role) -> bool {
        *self >= needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (viewer, responder, operator or admin)"))
    }
}

/// `GET /whoami`: the caller as the collector sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhoAmI {
    /// As recorded in the audit log (`token:NAME (owner PERSON)` for a token).
    pub name: String,
    pub role: Role,
    pub source: String,
    /// The person accountable: the user, or the token's owner.
    pub person: String,
    pub token_id: Option<String>,
}

/// `GET /users`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserList {
    pub users: Vec<User>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub created: String,
    pub disabled: bool,
}

/// `POST /users`: without `password`, the collector generates one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserAddRequest {
    pub name: String,
    pub role: Role,
    /// At least 12 characters.
    pub password: Option<String>,
    #[serde(default)]
    pub reason: String,
}

/// The answer of `POST /users`, with the generated password (shown once)
/// whether the user was added or waits for approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserAddAnswer {
    #[serde(flatten)]
    pub outcome: Submitted<UserRole>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `POST /users/{name}/role`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRoleRequest {
    pub role: Role,
    #[serde(default)]
    pub reason: String,
}

/// A user's name and role: what adding a user or changing a role did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRole {
    pub name: String,
    pub role: Role,
}

/// `GET /tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenList {
    pub tokens: Vec<ApiToken>,
}

/// An API token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created: String,
    pub created_by: String,
    /// The person behind the token.
    pub owner: String,
    pub expires: Option<String>,
    pub revoked: Option<String>,
}

/// `POST /tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreateRequest {
    pub name: String,
    pub role: Role,
    /// `"30d"`; never expires without it.
    pub expires: Option<String>,
    #[serde(default)]
    pub reason: String,
}

/// The answer of `POST /tokens`, with the secret (shown once) whether the
/// token was created or waits for approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreateAnswer {
    #[serde(flatten)]
    pub outcome: Submitted<TokenCreated>,
    pub token: String,
}

/// What creating a token did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreated {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub expires: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_are_lowercase_and_ordered() {
        for r in Role::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), json!(r.as_str()));
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!(Role::Admin.allows(Role::Operator));
        assert!(!Role::Responder.allows(Role::Operator));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn the_secret_comes_with_either_answer() {
        let done: TokenCreateAnswer = serde_json::from_value(
            json!({"id": "t1", "name": "ci", "role": "viewer", "expires": null, "token": "opsp_x"}),
        )
        .unwrap();
        assert_eq!(done.token, "opsp_x");
        assert!(matches!(done.outcome, Submitted::Done(ref t) if t.id == "t1"));
        let added: UserAddAnswer =
            serde_json::from_value(json!({"name": "u", "role": "admin"})).unwrap();
        assert_eq!(added.password, None);
    }
}
