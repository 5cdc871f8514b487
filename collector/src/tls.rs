//! TLS for the ingest listener (rustls, PEM files from the config): the
//! acceptor, and serving through `common::serve` with the TLS handshake as
//! the per-connection step (bounded by the listener's header timeout).

use anyhow::Context;
use common::serve::{Limits, ListenerStats, RequestBody};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Loads a certificate chain and private key (PEM) into an acceptor.
pub fn acceptor(cert_path: &Path, key_path: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert_path)
            .with_context(|| format!("cannot open {}", cert_path.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("cannot read certificates from {}", cert_path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", cert_path.display());
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key_path)
            .with_context(|| format!("cannot open {}", key_path.display()))?,
    ))
    .with_context(|| format!("cannot read the private key in {}", key_path.display()))?
    .with_context(|| format!("no private key in {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` over TLS until `shutdown` with the listener's limits (see
/// `common::serve`; the handshake must finish within the header timeout),
/// then drains open connections within `grace`.
pub async fn serve<A, F>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: A,
    limits: Limits,
    stats: Arc<ListenerStats>,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()>
where
    A: Fn(http::Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = axum::response::Response> + Send + 'static,
{
    let handshake = move |tcp| {
        let acceptor = acceptor.clone();
        async move { acceptor.accept(tcp).await }
    };
    common::serve::serve(listener, handshake, app, limits, stats, shutdown, grace).await
}
