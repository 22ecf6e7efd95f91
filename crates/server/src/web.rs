//! The browser app: the files of `web/app/`, embedded in the binary by `build.rs`. `index.html`
//! is served at `/`, every other file at `/ui/<path>`, each with its ETag (a reload asks with
//! `If-None-Match` and gets 304) and a content security policy that lets the page run only its
//! own scripts, so text that slips into the page as HTML still cannot run.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;

/// One embedded file.
#[derive(Debug)]
pub(crate) struct WebFile {
    /// Its path under `web/app/`, with `/`.
    pub(crate) path: &'static str,
    pub(crate) bytes: &'static [u8],
    pub(crate) content_type: &'static str,
    /// A quoted hash of its bytes.
    pub(crate) etag: &'static str,
}

/// Every file of `web/app/`, sorted by path.
pub(crate) static FILES: &[WebFile] = include!(concat!(env!("OUT_DIR"), "/web_files.rs"));

/// Only the page's own scripts, styles, images and socket; no frames, no plugins, no inline
/// script; and (trusted types) no string may become HTML or script through a DOM sink such as
/// `innerHTML`: the page never does that, so a slip would be refused by the browser.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; font-src 'self'; manifest-src 'self'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'";

/// The app's routes, merged into the server's router.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index)).route("/ui/{*path}", get(file))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    let Ok(index) = FILES.binary_search_by(|file| file.path.cmp(path)) else {
        return ApiError::not_found("file").into_response();
    };
    let file = &FILES[index];
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == file.etag || tag.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        file.bytes.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(file.content_type));
    headers.insert(header::ETAG, HeaderValue::from_static(file.etag));
    // Always asked again (and answered 304 when unchanged), so a new server version's page
    // is never mixed with an old cached module.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
