//! Audit: the tamper-evident log every capability writes to (the store
//! appends an entry in the same transaction as each change, see
//! `store::audit`), read, verified and exported here.
//!
//! Routes: `GET /api/v1/audit`, `/api/v1/audit/verify`, `/api/v1/audit/export`
//! (admin); console `/console/audit`, `/console/audit/verify`,
//! `/console/audit/export` (admin). Audit actions: none of its own; every
//! capability declares its actions with [`actions!`] and [`registry`] lists
//! them all (the console's filter reads it).

pub mod api;
pub mod console;

use crate::kernel::{Role, Route};

/// Declares a capability's audit actions: an enum whose `as_str()` is the
/// action name as written in audit entries (`noun.verb`), and `ALL`.
macro_rules! actions {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $variant:ident => $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $variant,)* }
        impl $name {
            /// Every action, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            /// The action as written in audit entries.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s,)* }
            }
        }
    };
}
pub(crate) use actions;

/// Every audit action of every capability.
pub fn registry() -> Vec<&'static str> {
    let mut all = Vec::new();
    all.extend(crate::access::Action::ALL.iter().map(|a| a.as_str()));
    all.extend(crate::fleet::Action::ALL.iter().map(|a| a.as_str()));
    all.extend(crate::flags::Action::ALL.iter().map(|a| a.as_str()));
    all.extend(crate::killswitches::Action::ALL.iter().map(|a| a.as_str()));
    all.extend(crate::approvals::Action::ALL.iter().map(|a| a.as_str()));
    all
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::get("/api/v1/audit", Role::Viewer, api::audit_list),
        Route::get("/api/v1/audit/verify", Role::Viewer, api::audit_verify),
        Route::get("/api/v1/audit/export", Role::Admin, api::audit_export),
        Route::get("/console/audit", Role::Viewer, console::audit_page).nav("audit", "Audit", 50),
        Route::get("/console/audit/verify", Role::Viewer, console::audit_verify),
        Route::get("/console/audit/export", Role::Admin, console::audit_export),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_registry_names_each_action_once_in_one_style() {
        let all = super::registry();
        let mut seen = std::collections::HashSet::new();
        for a in &all {
            assert!(seen.insert(a), "{a} declared twice");
            assert!(
                a.split('.').count() >= 2
                    && a.chars()
                        .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_'),
                "{a} is not noun.verb"
            );
        }
        assert!(all.len() >= 20, "{all:?}");
    }
}
