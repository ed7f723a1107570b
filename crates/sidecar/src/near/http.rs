//! The HTTP API on a mirrored table: `GET` fills on a miss, `PUT`/`DELETE` write through.

use super::{lookup, Cached, Mirror, Near, NearStats, UpstreamError};
use crate::error::{ApiError, Code};
use crate::server::Shared;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;

/// The mirror of table `name`, if the table mirrors Redis.
pub(crate) fn mirror<'s>(s: &'s Shared, name: &str) -> Option<(&'s Near, &'s Arc<Mirror>)> {
    let near = s.near.as_deref()?;
    near.mirrors.get(name).map(|m| (near, m))
}

fn upstream_err(e: UpstreamError) -> ApiError {
    match e {
        UpstreamError::Unavailable(_) => ApiError::new(Code::UpstreamUnavailable, e.to_string()),
        UpstreamError::Redis(_) => ApiError::new(Code::UpstreamError, e.to_string()),
        UpstreamError::ShuttingDown => ApiError::new(Code::ShuttingDown, e.to_string()),
    }
}

/// 404 for a key absent upstream; `X-Podcache-Source` says whether it came from the table.
fn absent(source: &'static str) -> Response {
    let mut r = ApiError::new(Code::NotFound, "no such key in the upstream Redis").into_response();
    r.headers_mut().insert("x-podcache-source", HeaderValue::from_static(source));
    r
}

fn value(v: Vec<u8>, source: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::HeaderName::from_static("x-podcache-source"), source),
        ],
        v,
    )
        .into_response()
}

/// `GET` on a mirrored table: the table's value or negative entry, else a fill.
pub(crate) async fn get(near: &Near, m: &Mirror, key: &[u8]) -> Result<Response, ApiError> {
    let r = m.table.reader().map_err(|e| ApiError::new(Code::Internal, e.to_string()))?;
    match lookup(r, key).map_err(|e| ApiError::new(Code::Contended, e.to_string()))? {
        Cached::Value(v) => {
            NearStats::inc(&near.stats.hits);
            return Ok(value(v, "table"));
        }
        Cached::Absent => {
            NearStats::inc(&near.stats.hits);
            return Ok(absent("table"));
        }
        Cached::NotCached => {}
    }
    match near.fill(m, key).await.map_err(upstream_err)? {
        Some(v) => Ok(value(v, "upstream")),
        None => Ok(absent("upstream")),
    }
}

/// `PUT` on a mirrored table: `SET` in Redis, evict locally, then answer.
pub(crate) async fn put(
    near: &Near,
    m: &Mirror,
    key: &[u8],
    v: Vec<u8>,
    ttl: Option<Duration>,
) -> Result<StatusCode, ApiError> {
    near.set(m, key, v, ttl).await.map_err(upstream_err)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE` on a mirrored table: `DEL` in Redis, evict locally, then answer.
pub(crate) async fn delete(near: &Near, m: &Mirror, key: &[u8]) -> Result<StatusCode, ApiError> {
    if near.del(m, key).await.map_err(upstream_err)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(Code::NotFound, "no such key in the upstream Redis"))
    }
}
