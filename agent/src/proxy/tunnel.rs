//! WebSocket upgrades: which upgrade requests are forwarded, and the joined tunnel,
//! closed when a kill now blocks the request that opened it.

use super::paths::find_block;
use super::*;

/// The original request of an upgraded tunnel, matched again on every kill-switch change.
pub(super) struct TunnelMatch {
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) headers: HeaderMap,
}

/// Runs an upgraded tunnel until it ends, the proxy shuts down, or a new kill-switch state
/// blocks the request that opened it (then both sides are closed: dropping the upgraded
/// connections closes the client's and the app's sockets).
pub(super) async fn run_tunnel(
    shared: Arc<Shared>,
    m: TunnelMatch,
    tunnel: impl Future<Output = std::io::Result<(u64, u64)>>,
) {
    tokio::pin!(tunnel);
    let mut killed = shared.killed.clone();
    let mut watching = true;
    loop {
        if watching {
            // Checked before every wait, so a kill that landed between the request's own
            // check and this point is seen too.
            let blocked = {
                let k = killed.borrow_and_update();
                find_block(&shared.rules, &k, &m.method, &m.path, &m.headers)
            };
            if let Some(i) = blocked {
                shared
                    .metrics
                    .tunnels_closed_by_kill_total
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(killswitch = %shared.rules[i].name, path = %m.path, "open tunnel closed: its route is now killed");
                return;
            }
        }
        tokio::select! {
            res = &mut tunnel => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "proxy upgraded tunnel ended with an error");
                }
                return;
            }
            _ = shared.shutdown.cancelled() => return,
            changed = killed.changed(), if watching => {
                // The sender is gone only when the agent stops; keep the tunnel until then.
                watching = changed.is_ok();
            }
        }
    }
}

pub(super) const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// True for an `Upgrade` value of exactly `websocket` (any case).
pub(super) fn is_websocket(v: &HeaderValue) -> bool {
    v.to_str()
        .is_ok_and(|s| s.trim().eq_ignore_ascii_case("websocket"))
}

/// The `Upgrade` value when the request asks for a WebSocket upgrade.
///
/// Any other upgrade (`h2c` above all: HTTP/2 inside the tunnel would carry requests the
/// kill switches never see) is not forwarded: its `Upgrade`, `Connection` and
/// `HTTP2-Settings` headers are stripped and the request goes on as plain HTTP/1.1. Stripping
/// rather than refusing keeps clients working: an h2c upgrade is only an offer, which a server
/// that does not take it answers in HTTP/1.1 (RFC 9113 §3.1, RFC 7540 §3.2).
pub(super) fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers
            .get(header::UPGRADE)
            .filter(|v| is_websocket(v))
            .cloned()
    } else {
        None
    }
}
