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
    let app = router(services, activity).into_make_service_with_connect_info::<SocketAddr>();
    let served = match listener::ConsoleListener::new(listener, tls) {
        // Tapped (with nothing to do) so that each connection's peer
        // address reaches the routes as ConnectInfo.
        Ok(l) => {
            use axum::serve::ListenerExt as _;
            axum::serve(l.tap_io(|_| {}), app).await
        }
        Err(e) => Err(e),
    };
    sampler.abort();
    if let Err(e) = served {
        tracing::error!(error = %e, "the web console's listener failed");
    }
}
