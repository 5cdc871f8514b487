//! The admin API's typed requests and answers (`common::api`) against a
//! collector started in-process: every `/api/v1` route is called with the
//! typed request, and every answer (200 done, 202 waiting for approval, 422
//! warnings, refusals) must deserialise into its type and serialise back to
//! exactly the JSON the collector sent. A member the collector adds, drops,
//! renames or turns `null` without the type following fails here.

mod access;
mod audit;
mod flags;
mod fleet;
mod harness;

use harness::Harness;

/// Every route of the admin API; the test fails unless it called each.
const ROUTES: &[&str] = &[
    "GET /whoami",
    "GET /environments",
    "GET /agents",
    "GET /agents/enroll-tokens",
    "POST /agents/enroll-tokens",
    "POST /agents/enroll-tokens/{id}/revoke",
    "POST /agents/{id}/revoke",
    "GET /flags",
    "POST /flags/apply",
    "GET /flags/{key}",
    "POST /flags/{key}",
    "GET /revisions",
    "GET /revisions/{revision}",
    "GET /killswitches",
    "POST /killswitches",
    "POST /killswitches/{name}/kill",
    "POST /killswitches/{name}/revive",
    "GET /audit",
    "GET /audit/verify",
    "GET /audit/export",
    "GET /tokens",
    "POST /tokens",
    "POST /tokens/{id}/revoke",
    "GET /users",
    "POST /users",
    "POST /users/{name}/role",
    "GET /approvals",
    "GET /approvals/{id}",
    "POST /approvals/{id}/approve",
    "POST /approvals/{id}/reject",
    "GET /approval-policy",
    "POST /approval-policy",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_answers_its_type() {
    let h = Harness::start().await;
    let agent = fleet::fleet(&h).await;
    flags::flags(&h, &agent).await;
    flags::killswitches(&h).await;
    access::access(&h).await;
    access::policy(&h).await;
    fleet::revokes(&h, &agent.agent_id).await;
    audit::audit(&h).await;
    audit::refusals(&h).await;
    let called = h.called.lock().unwrap().clone();
    let missed: Vec<_> = ROUTES.iter().filter(|r| !called.contains(*r)).collect();
    assert!(missed.is_empty(), "routes never called: {missed:?}");
    h.stop().await;
}
