//! The web console (spec/console.md): pages for jobs, handlers, plugins
//! and the log, served by `serve` on its own HTTP listener
//! (`--http-listen`, off by default) with every asset embedded in the
//! binary, and the versioned JSON API under `/api/v1/` that the pages
//! use and `curl` users can use too. The API is a gateway to the gRPC
//! services of the same process, so a call needs the same token and
//! scope over HTTP as over gRPC.

mod activity;
mod assets;
mod json;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get, post};
use tokio::net::TcpListener;

pub use routes::ConsoleServices;

/// The console's routes: the pages' assets and the API, with the
/// overview's record of the last minutes in `activity`.
fn router(services: ConsoleServices, activity: Arc<activity::Activity>) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::app_js))
        .route("/verify.js", get(assets::verify_js))
        .route("/style.css", get(assets::style_css))
        .route("/api/v1/overview", get(routes::overview))
        .route("/api/v1/overview/live", get(routes::overview_live))
        .route("/api/v1/jobs", get(routes::jobs))
        .route("/api/v1/jobs/cancel", post(routes::cancel_many))
        .route("/api/v1/jobs/{id}", get(routes::job))
        .route("/api/v1/jobs/{id}/log", get(routes::job_log))
        .route("/api/v1/jobs/{id}/live", get(routes::job_live))
        .route("/api/v1/jobs/{id}/cancel", post(routes::cancel))
        .route("/api/v1/jobs/{id}/retry", post(routes::retry))
        .route("/api/v1/log", get(routes::log))
        .route("/api/v1/log/entries", get(routes::entries))
        .route("/api/v1/log/consistency", get(routes::consistency))
        .route("/api/v1/log/equivocations", get(routes::equivocations))
        .route("/api/v1/subjects", get(routes::subjects))
        .route("/api/v1/subjects/{did}", get(routes::subject))
        .route("/api/v1/plugins", get(routes::plugins))
        .route("/api/v1/schedules", get(routes::schedules))
        .route("/api/v1/schedules/{id}/pause", post(routes::pause))
        .route("/api/v1/schedules/{id}/resume", post(routes::resume))
        .route("/api/v1/budgets/{handler}", get(routes::budget))
        .route("/api/{*rest}", any(routes::no_route))
        .with_state(Arc::new(routes::ConsoleState { services, activity }))
}

/// Serves the console on `listener` (over TLS with `tls`) until the
/// task is dropped.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    services: ConsoleServices,
) {
    let activity = Arc::new(activity::Activity::default());
    let sampler = tokio::spawn(activity::sample(
        Arc::clone(&services.counters),
        Arc::clone(&activity),
    ));
    let app = router(services, activity).into_make_service_with_connect_info::<SocketAddr>();
    let served = match tls {
        None => axum::serve(listener, app).await,
        Some(config) => {
            // Tapped (with nothing to do) so that its peer address reaches
            // the routes like a plain listener's.
            use axum::serve::ListenerExt as _;
            let tls = TlsListener::new(listener, config).tap_io(|_| {});
            axum::serve(tls, app).await
        }
    };
    sampler.abort();
    if let Err(e) = served {
        tracing::error!(error = %e, "the web console's listener failed");
    }
}

/// Longest a client may take over its TLS handshake.
const HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts TLS connections: each handshake runs in a task of its own (a
/// slow client delays nobody) and only finished ones are handed out.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: std::io::Result<SocketAddr>,
}

impl TlsListener {
    fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> TlsListener {
        let local = listener.local_addr();
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "web console: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, sender) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "web console: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "web console: TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        TlsListener { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task is gone: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}
