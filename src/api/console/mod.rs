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
mod listener;
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
    let app = router(services, activity);
    match listener::ConsoleListener::new(listener, tls) {
        Ok(l) => serve_connections(l, app).await,
        Err(e) => {
            sampler.abort();
            tracing::error!(error = %e, "the web console's listener failed");
        }
    }
}

/// Serves each admitted connection with `app`, its peer address reaching
/// the routes as `ConnectInfo`. Each request's head must arrive within
/// [`listener::FIRST_BYTES`]: the listener closes a connection that sends
/// nothing, and this one that starts a request and stalls (axum's own
/// `serve` sets no timer, so hyper would wait for ever).
async fn serve_connections(mut listener: listener::ConsoleListener, app: Router) {
    use axum::serve::Listener as _;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    loop {
        let (io, peer) = listener.accept().await;
        let app = app
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo::<SocketAddr>(
                peer,
            )));
        tokio::spawn(async move {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(listener::FIRST_BYTES);
            let service = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "web console: connection ended");
            }
        });
    }
}
