//! Enrollment: the agent exchanges its enrollment token once for its own
//! credential (`POST /v1/agent/enroll`), kept in the data dir.

use super::{error_code, Ctx};
use crate::disk::{self, Credential};
use common::wire::{self, EnrollRequest, EnrollResponse};

pub(super) async fn enroll(ctx: &Ctx, token: Option<&str>) -> Result<Credential, String> {
    let token = token.ok_or("no credential yet and no enrollment token configured (collector.token or collector.token_file)")?;
    let req = EnrollRequest {
        token: token.to_string(),
        identity: ctx.shared.identity.clone(),
    };
    let resp = ctx
        .http
        .post(format!("{}{}", ctx.url, wire::PATH_ENROLL))
        .json(&req)
        .send()
        .await
        .map_err(|e| format!("cannot reach the collector: {e}"))?;
    if !resp.status().is_success() {
        let (status, code, msg) = error_code(resp).await;
        return Err(format!("enrollment refused ({status} {code}): {msg}"));
    }
    let r: EnrollResponse = resp
        .json()
        .await
        .map_err(|e| format!("bad enrollment answer: {e}"))?;
    let cred = Credential {
        agent_id: r.agent_id,
        credential: r.credential,
        collector_url: ctx.url.clone(),
    };
    let path = ctx.shared.config.data_dir.join(disk::CREDENTIAL_FILE);
    let c2 = cred.clone();
    tokio::task::spawn_blocking(move || disk::write_json(&path, &c2, 0o600))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot store the agent credential: {e}"))?;
    tracing::info!(agent = %cred.agent_id, "enrolled with the collector");
    ctx.shared
        .update_collector(|s| s.agent_id = Some(cred.agent_id.clone()));
    ctx.cred_tx.send_replace(Some(cred.clone()));
    Ok(cred)
}
