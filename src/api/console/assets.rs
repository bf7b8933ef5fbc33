//! The console's pages: one HTML page, its script and its style sheet,
//! embedded in the binary at build time (no Node toolchain, no files to
//! install), each served with a content security policy that lets the
//! page load only these and talk only to this server.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../../console/index.html");
const APP: &str = include_str!("../../../console/app.js");
const VERIFY: &str = include_str!("../../../console/verify.js");
const STYLE: &str = include_str!("../../../console/style.css");

/// Scripts, styles and calls from this origin only; no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the page; the rest is drawn by the script.
pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /app.js`.
pub(super) async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP)
}

/// `GET /verify.js`: the in-browser checks.
pub(super) async fn verify_js() -> Response {
    asset("text/javascript; charset=utf-8", VERIFY)
}

/// `GET /style.css`.
pub(super) async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
