//! Errors: start-up failures of `serve`, and the JSON errors of the HTTP API.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;

/// `serve` could not start (or a listener failed). Each message is one line that says what to
/// do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    Config(String),
    /// The directory could not be created or used.
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another `podcache serve` holds the directory.
    AlreadyServed {
        /// The lock file.
        lock: PathBuf,
    },
    /// The volume has too little free space for the files to create.
    VolumeTooSmall {
        /// The directory.
        dir: PathBuf,
        /// What is needed, file by file.
        files: Vec<(PathBuf, u64)>,
        /// Bytes needed in total.
        needed: u64,
        /// Bytes free on the volume.
        free: u64,
    },
    /// Creating or attaching a file failed (layout mismatch, locked, no space, wrong kind, …).
    File(podcache_writer::CreateError),
    /// The token file could not be read or is empty.
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A listener could not be opened.
    Listen {
        /// What was to be opened.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(m) => write!(f, "invalid configuration: {m}"),
            Error::Dir { dir, source } => write!(f, "{}: {source}", dir.display()),
            Error::AlreadyServed { lock } => write!(
                f,
                "another `podcache serve` is already serving this directory (it holds the lock on {}); \
                 stop it or use another --dir",
                lock.display()
            ),
            Error::VolumeTooSmall { dir, files, needed, free } => {
                write!(
                    f,
                    "volume too small: {} has {free} bytes free, the files need {needed} bytes (",
                    dir.display()
                )?;
                for (i, (p, n)) in files.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}: {n}", p.display())?;
                }
                f.write_str("); enlarge the volume (emptyDir sizeLimit) or shrink --table/--ring")
            }
            Error::File(e) => {
                write!(f, "{e}")?;
                if matches!(e, podcache_writer::CreateError::LayoutMismatch { .. }) {
                    f.write_str(
                        " (pass --replace-mismatched to replace it, losing its data; sizes with k, M, G are powers \
                         of 1000 as in Kubernetes: a file made when they meant KiB, MiB, GiB is kept by writing Ki, \
                         Mi, Gi)",
                    )?;
                }
                Ok(())
            }
            Error::Token { path, reason } => write!(f, "token file {}: {reason}", path.display()),
            Error::Listen { what, source } => write!(f, "cannot listen on {what}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Dir { source, .. } | Error::Listen { source, .. } => Some(source),
            Error::File(e) => Some(e),
            _ => None,
        }
    }
}

/// Stable error codes of the HTTP API (the `code` field of every error body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Code {
    /// 401: missing or wrong bearer token.
    Unauthorized,
    /// 404: no such table, ring, key or route.
    NotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 400: a table or ring name outside `[A-Za-z0-9_-]{1,64}`.
    InvalidName,
    /// 400: an empty key.
    InvalidKey,
    /// 400: a key longer than 255 bytes.
    KeyTooLarge,
    /// 413: a value larger than the table accepts.
    ValueTooLarge,
    /// 413: a message larger than the ring accepts.
    MessageTooLarge,
    /// 413: a request body over `--max-body`.
    BodyTooLarge,
    /// 400: a bad `ttl_ms`.
    InvalidTtl,
    /// 400: a malformed NDJSON line in a load (nothing of that load was stored).
    InvalidNdjson,
    /// 400: another malformed request (query string, …).
    BadRequest,
    /// 408: the request body did not arrive within `--body-timeout`.
    RequestTimeout,
    /// 507: the table's index has no free slot near the key's home bucket.
    TableFull,
    /// 503: a get kept racing the writer; retry.
    Contended,
    /// 503: the server is shutting down.
    ShuttingDown,
    /// 503: too many open ring subscriptions.
    TooManySubscribers,
    /// 503: the table mirrors Redis and Redis cannot be reached now.
    UpstreamUnavailable,
    /// 502: the table mirrors Redis and Redis answered with an error.
    UpstreamError,
    /// 503: the file was deleted or replaced under the sidecar; writes are refused until the
    /// sidecar restarts and creates it anew.
    FileLost,
    /// 500: the file is corrupt.
    Corrupt,
    /// 500: anything else.
    Internal,
}

impl Code {
    /// The code as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthorized => "unauthorized",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::InvalidName => "invalid_name",
            Code::InvalidKey => "invalid_key",
            Code::KeyTooLarge => "key_too_large",
            Code::ValueTooLarge => "value_too_large",
            Code::MessageTooLarge => "message_too_large",
            Code::BodyTooLarge => "body_too_large",
            Code::InvalidTtl => "invalid_ttl",
            Code::InvalidNdjson => "invalid_ndjson",
            Code::BadRequest => "bad_request",
            Code::RequestTimeout => "request_timeout",
            Code::TableFull => "table_full",
            Code::Contended => "contended",
            Code::ShuttingDown => "shutting_down",
            Code::TooManySubscribers => "too_many_subscribers",
            Code::UpstreamUnavailable => "upstream_unavailable",
            Code::UpstreamError => "upstream_error",
            Code::FileLost => "file_lost",
            Code::Corrupt => "corrupt",
            Code::Internal => "internal",
        }
    }

    /// The HTTP status of the code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::InvalidName
            | Code::InvalidKey
            | Code::KeyTooLarge
            | Code::InvalidTtl
            | Code::InvalidNdjson
            | Code::BadRequest => StatusCode::BAD_REQUEST,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Code::ValueTooLarge | Code::MessageTooLarge | Code::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::TableFull => StatusCode::INSUFFICIENT_STORAGE,
            Code::Contended | Code::ShuttingDown | Code::TooManySubscribers | Code::FileLost => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Code::UpstreamUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::UpstreamError => StatusCode::BAD_GATEWAY,
            Code::Corrupt | Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An API error: `{"error": {"code": "...", "message": "..."}}` with the code's status.
#[derive(Debug)]
pub struct ApiError {
    /// The stable code.
    pub code: Code,
    /// A message for people.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}});
        let mut resp = (self.code.status(), axum::Json(body)).into_response();
        if self.code == Code::Unauthorized {
            resp.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
