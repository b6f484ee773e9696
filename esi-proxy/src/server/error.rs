//! The request error and the one place it becomes an HTTP status: upstream failures
//! are 502/504, bad requests 4xx, our own faults 500. Response bodies never show internals;
//! details go to the log. Also why the server could not start or run ([`ServerError`]).

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::compose::{ComposeError, FailureKind, PrimaryError, ERROR_PAGE_TYPE};
use crate::config::ErrorPages;
use crate::fetch::{ErrorKind, FetchError};

use super::body::{full, Body};

/// Why a request could not be answered normally.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The origin could not be reached or answered badly.
    #[error("origin: {0}")]
    Origin(#[from] FetchError),
    /// The page could not be composed before its headers were sent.
    #[error("compose: {0}")]
    Compose(#[from] ComposeError),
    /// The origin's body is encoded in a way the proxy cannot decode for ESI processing.
    #[error("layout uses unsupported content-encoding {0:?}")]
    UnsupportedEncoding(String),
    /// The request is not acceptable (not a forward proxy, method refused ...).
    #[error("refused: {0}")]
    Refused(&'static str, StatusCode),
    /// An admin endpoint was called without the right credentials.
    #[error("admin endpoint needs the admin token")]
    Unauthorized,
    /// Nothing is here.
    #[error("not found")]
    NotFound,
    /// Handling the request panicked (logged and counted where it was caught).
    #[error("request handling panicked")]
    Panic,
}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The config cannot be used.
    #[error("config: {0}")]
    Config(String),
    /// Accepting connections failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

// === impl Error ===

impl Error {
    /// The status a client gets for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Origin(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            Error::Origin(_) => StatusCode::BAD_GATEWAY,
            Error::Compose(ComposeError::LayoutTimeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            Error::Compose(ComposeError::Panic) | Error::Panic => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Compose(
                ComposeError::Required(f) | ComposeError::Primary(PrimaryError::Failed(f)),
            ) if f.kind == FailureKind::Fetch(ErrorKind::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            Error::Compose(_) | Error::UnsupportedEncoding(_) => StatusCode::BAD_GATEWAY,
            Error::Refused(_, status) => *status,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::NotFound => StatusCode::NOT_FOUND,
        }
    }

    /// The short text sent as the body: the status's reason and, for refusals, why.
    pub fn public_message(&self) -> String {
        let status = self.status();
        let reason = status.canonical_reason().unwrap_or("Error");
        match self {
            Error::Refused(why, _) => format!("{} {reason}: {why}\n", status.as_u16()),
            _ => format!("{} {reason}\n", status.as_u16()),
        }
    }
}

/// The response a client gets for `e`: its status and short public text or, when the page
/// failed on its primary fragment, the error page `pages` configures for that status.
pub(super) fn error_response(e: &Error, pages: &ErrorPages) -> Response<Body> {
    let status = e.status();
    let page = matches!(e, Error::Compose(ComposeError::Primary(_)))
        .then(|| pages.for_status(status))
        .flatten();
    let (body, content_type) = match page {
        Some(page) => (full(page.clone()), ERROR_PAGE_TYPE),
        None => (full(e.public_message()), "text/plain; charset=utf-8"),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
