//! The kernel: what every capability of the collector uses, and nothing that
//! belongs to one capability. See ARCHITECTURE.md ("Code map").
//!
//! - [`error`]: the one API error type, its closed set of codes and their
//!   HTTP status; the console renders the same error as a page.
//! - [`caller`]: roles, the [`Actor`] recorded in audit entries, the API
//!   token [`Caller`] extractor, bearer-token parsing and constant-time
//!   comparison.
//! - [`names`]: the one validation of names (users, tokens, environments,
//!   services, kill switches).
//! - [`clock`]: the injectable clock held by `Ctx`.
//! - [`json`]: the JSON body extractor with the route's body limit, and small
//!   response helpers.
//! - [`route`]: the route declaration every capability's table is made of.

pub mod caller;
pub mod clock;
pub mod error;
pub mod json;
pub mod names;
pub mod route;

pub use caller::{bearer, constant_time_eq, Actor, Caller, Role};
pub use clock::{Clock, ClockHandle, SystemClock};
pub use error::{ApiError, ApiResult, ErrorCode};
pub use json::{json_response, ok, BodyLimit, Json};
pub use route::{Access, Nav, Route};
