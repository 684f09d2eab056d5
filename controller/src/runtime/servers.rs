//! The controller's own listeners (xDS, wasm, admin): binding, serving until stop, and a bounded
//! wait for them at shutdown. Shared by both providers.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the {what} on {addr}"))
}

/// The addresses the controller actually bound (port 0 resolved), as written to
/// `--bound-addresses-file`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct BoundAddresses {
    pub admin: SocketAddr,
    pub xds: SocketAddr,
    pub wasm: SocketAddr,
}

/// The xDS, wasm and admin listeners, bound by the caller (e.g. on port 0) or by [`Self::bind`].
pub struct Listeners {
    pub xds: TcpListener,
    pub wasm: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(
        xds: SocketAddr,
        wasm: SocketAddr,
        admin: SocketAddr,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            xds: bind(xds, "xDS server").await?,
            wasm: bind(wasm, "wasm endpoint").await?,
            admin: bind(admin, "admin endpoint").await?,
        })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn addresses(&self) -> std::io::Result<BoundAddresses> {
        Ok(BoundAddresses {
            admin: self.admin.local_addr()?,
            xds: self.xds.local_addr()?,
            wasm: self.wasm.local_addr()?,
        })
    }
}

/// Writes `addrs` to `path` as JSON, atomically (beside, then renamed), so a reader that sees
/// the file sees all of it.
pub(crate) fn write_bound_addresses(path: &Path, addrs: &BoundAddresses) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp~");
    let tmp = PathBuf::from(tmp);
    let text = serde_json::to_string(addrs)?;
    std::fs::write(&tmp, text + "\n").with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Resolves once the stop flag is set.
pub(crate) async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Serve `app` on `listener` (plain TCP or mutual TLS) until `stop` is set.
/// [`spawn_http`] for a router that reads the verified peer ([`crate::wasm::serve::PeerNode`]).
pub(crate) fn spawn_https_with_peers(
    listener: crate::tls::TlsListener,
    app: axum::Router,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<crate::wasm::serve::PeerNode>(),
        )
        .with_graceful_shutdown(stopped(stop))
        .await
    })
}

pub(crate) fn spawn_http<L>(
    listener: L,
    app: axum::Router,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped(stop))
            .await
    })
}

/// How long the servers may take to finish after shutdown before they are dropped.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Await `task` for at most `grace`; abort it and return `None` when it takes longer.
pub(crate) async fn join_within<T>(
    task: tokio::task::JoinHandle<T>,
    grace: Duration,
) -> Option<Result<T, tokio::task::JoinError>> {
    let abort = task.abort_handle();
    match tokio::time::timeout(grace, task).await {
        Ok(r) => Some(r),
        Err(_) => {
            abort.abort();
            None
        }
    }
}

/// Log how a server task ended (`None`: given up on after [`SHUTDOWN_GRACE`]).
pub(crate) fn log_server_end<E: std::fmt::Display>(
    name: &str,
    end: Option<Result<Result<(), E>, tokio::task::JoinError>>,
) {
    match end {
        None => tracing::info!(
            server = name,
            grace = ?SHUTDOWN_GRACE,
            "connections still open after the grace period; not waiting for them"
        ),
        Some(Ok(Err(e))) => tracing::warn!(server = name, error = %e, "server ended with an error"),
        Some(Err(e)) => tracing::warn!(server = name, error = %e, "server task failed"),
        Some(Ok(Ok(()))) => {}
    }
}
