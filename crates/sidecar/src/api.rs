//! The HTTP API (on `--listen` and `--socket`).
//!
//! | method | path | success |
//! |--------|------|---------|
//! | GET    | `/v1/tables` | 200 JSON list with stats |
//! | GET    | `/v1/tables/{table}` | 200 JSON stats of one table |
//! | GET    | `/v1/tables/{table}/keys?limit=N&cursor=C&prefix=P` | 200 JSON list of live keys (see [`MAX_KEYS_LIMIT`]) |
//! | GET    | `/v1/tables/{table}/keys/{key}` | 200 raw value ([`TTL_HEADER`] if it expires), 404 if absent |
//! | POST   | `/v1/tables/{table}/mget` | 200 `{"items": [...]}` (body: `{"keys": [...]}`, see [`MAX_MGET_KEYS`]) |
//! | PUT    | `/v1/tables/{table}/keys/{key}?ttl_ms=N` | 204 (body: raw value) |
//! | DELETE | `/v1/tables/{table}/keys/{key}` | 204, 404 if absent |
//! | POST   | `/v1/tables/{table}/load` | 200 `{"loaded": n}` (body: NDJSON) |
//! | GET    | `/v1/rings` | 200 JSON list with stats |
//! | POST   | `/v1/rings/{ring}/messages` | 200 `{"seq": n}` (body: raw message) |
//! | GET    | `/v1/rings/{ring}/subscribe?from=oldest\|newest\|SEQ` | Server-Sent Events (also resumes from `Last-Event-ID`) |
//!
//! Errors are `{"error": {"code": "...", "message": "..."}}`; see [`Code`].

use crate::error::{ApiError, Code};
use crate::metrics::{method_label, GetLabels, RequestLabels, RouteLabels};
use crate::names;
use crate::server::{RingEntry, Shared, TableEntry};
use crate::stats::{ring_stats, TableStatsJson};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use podcache_format::table::MAX_KEY;
use podcache_reader::{Expiry, GetError, RecvError};
use podcache_writer::{PublishError, PutError};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt as _;

type St = State<Arc<Shared>>;

/// The API router.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let max_body = shared.max_body;
    Router::new()
        .route("/v1/tables", get(list_tables))
        .route("/v1/tables/{table}", get(table_info))
        .route("/v1/tables/{table}/keys", get(list_keys))
        .route("/v1/tables/{table}/keys/{*key}", get(get_key).put(put_key).delete(delete_key))
        .route("/v1/tables/{table}/load", post(load))
        .route("/v1/tables/{table}/mget", post(mget))
        .route("/v1/rings", get(list_rings))
        .route("/v1/rings/{ring}/messages", post(publish))
        .route("/v1/rings/{ring}/subscribe", get(subscribe))
        .route_layer(axum::middleware::from_fn(known_params))
        .fallback(|| async { ApiError::new(Code::NotFound, "no such route (the API is under /v1/)") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(Code::MethodNotAllowed, "method not allowed on this route")
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&shared), read_body))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&shared), auth))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&shared), observe))
        .with_state(shared)
}

async fn auth(State(s): St, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        if !token.check(req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
            s.metrics.unauthorized.inc();
            let mut resp =
                ApiError::new(Code::Unauthorized, "missing or wrong bearer token (Authorization: Bearer <token>)")
                    .into_response();
            resp.extensions_mut().insert(Unauthenticated);
            return resp;
        }
    }
    next.run(req).await
}

/// The query parameters a route takes; anything else is refused.
fn params_of(method: &axum::http::Method, route: &str) -> &'static [&'static str] {
    use axum::http::Method;
    match (method, route) {
        (&Method::GET, "/v1/tables/{table}/keys") => &["limit", "cursor", "prefix"],
        (&Method::PUT, "/v1/tables/{table}/keys/{*key}") => &["ttl_ms"],
        (&Method::GET, "/v1/rings/{ring}/subscribe") => &["from"],
        _ => &[],
    }
}

/// Refuse a query parameter the route does not take (`?ttl=5` for `?ttl_ms=5` would otherwise
/// store the value without a TTL) with `400 bad_request` naming it.
async fn known_params(req: Request, next: Next) -> Response {
    if req.uri().query().is_some_and(|q| !q.is_empty()) {
        let route = req.extensions().get::<MatchedPath>().map_or("", |m| m.as_str());
        let allowed = params_of(req.method(), route);
        let given = match Query::<Vec<(String, String)>>::try_from_uri(req.uri()) {
            Ok(Query(v)) => v,
            Err(e) => {
                return ApiError::new(Code::BadRequest, format!("bad query string: {}", e.body_text())).into_response()
            }
        };
        if let Some((name, _)) = given.iter().find(|(n, _)| !allowed.contains(&n.as_str())) {
            let takes = if allowed.is_empty() {
                "this request takes no query parameters".to_string()
            } else {
                format!("this request takes: {}", allowed.join(", "))
            };
            return ApiError::new(Code::BadRequest, format!("unknown query parameter {name:?} ({takes})"))
                .into_response();
        }
    }
    next.run(req).await
}

/// An error answer after which the connection is closed (the rest of the body is not read).
fn closing(e: ApiError) -> Response {
    let mut resp = e.into_response();
    resp.headers_mut().insert(header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    resp
}

/// Read the whole request body within `--body-timeout` of its head (a body trickling in byte by
/// byte would otherwise hold the connection without end), and refuse a declared
/// `Content-Length` above `--max-body` before reading any of it. Runs after the token check.
///
/// tower-http's `TimeoutBody` restarts its timer at every frame, so it does not bound a body
/// sent one byte every few seconds; this bounds the whole body.
async fn read_body(State(s): St, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(u64::MAX));
    if declared.is_some_and(|n| n > s.max_body as u64) {
        return closing(ApiError::new(
            Code::BodyTooLarge,
            format!("declared body larger than the server's limit of {} bytes (--max-body)", s.max_body),
        ));
    }
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if declared.unwrap_or(0) == 0 && !chunked {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, s.max_body));
    match tokio::time::timeout(s.limits.body_timeout, read).await {
        Ok(Ok(collected)) => next.run(Request::from_parts(parts, axum::body::Body::from(collected.to_bytes()))).await,
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => closing(ApiError::new(
            Code::BodyTooLarge,
            format!("request body larger than the server's limit of {} bytes (--max-body)", s.max_body),
        )),
        Ok(Err(e)) => closing(ApiError::new(Code::BadRequest, format!("cannot read the request body: {e}"))),
        Err(_) => closing(ApiError::new(
            Code::RequestTimeout,
            format!("the request body did not arrive within {:?} (--body-timeout)", s.limits.body_timeout),
        )),
    }
}

/// Marks a response to a request refused for its token: it is counted once, without labels.
#[derive(Clone, Copy)]
struct Unauthenticated;

/// Count and time a request by method, route and status, once the token was checked: labels
/// take only values from fixed sets (see `metrics::RequestLabels`), and a request refused for
/// its token only adds to `podcache_http_unauthorized_requests`.
async fn observe(State(s): St, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let route =
        req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let resp = next.run(req).await;
    if resp.extensions().get::<Unauthenticated>().is_some() {
        return resp;
    }
    let status = resp.status().as_u16();
    if s.access_log {
        tracing::info!(
            target: "podcache::access",
            method, route = %route, status, micros = start.elapsed().as_micros() as u64, "request"
        );
    }
    s.metrics.requests.get_or_create(&RequestLabels { method, route: route.clone(), status }).inc();
    s.metrics.latency.get_or_create(&RouteLabels { method, route }).observe(start.elapsed().as_secs_f64());
    resp
}

fn table<'s>(s: &'s Shared, name: &str) -> Result<&'s Arc<TableEntry>, ApiError> {
    names::check(name).map_err(|e| ApiError::new(Code::InvalidName, format!("table name {name:?}: {e}")))?;
    s.tables.get(name).ok_or_else(|| ApiError::new(Code::NotFound, format!("no table {name:?} (see GET /v1/tables)")))
}

fn ring<'s>(s: &'s Shared, name: &str) -> Result<&'s Arc<RingEntry>, ApiError> {
    names::check(name).map_err(|e| ApiError::new(Code::InvalidName, format!("ring name {name:?}: {e}")))?;
    s.rings.get(name).ok_or_else(|| ApiError::new(Code::NotFound, format!("no ring {name:?} (see GET /v1/rings)")))
}

fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::new(Code::InvalidKey, "empty key"));
    }
    if key.len() > MAX_KEY {
        return Err(ApiError::new(Code::KeyTooLarge, format!("key of {} bytes, at most {MAX_KEY} allowed", key.len())));
    }
    Ok(())
}

fn path_err(e: PathRejection) -> ApiError {
    ApiError::new(Code::BadRequest, format!("bad path: {e}"))
}

fn query_err(e: QueryRejection) -> ApiError {
    ApiError::new(Code::BadRequest, format!("bad query string: {e}"))
}

fn body_err(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(Code::BodyTooLarge, "request body larger than the server's limit (--max-body)")
    } else {
        ApiError::new(Code::BadRequest, format!("cannot read the request body: {e}"))
    }
}

fn get_err(e: GetError) -> ApiError {
    match e {
        GetError::Contended => ApiError::new(Code::Contended, e.to_string()),
        GetError::Corrupt { .. } => ApiError::new(Code::Corrupt, e.to_string()),
        _ => ApiError::new(Code::Internal, e.to_string()),
    }
}

fn put_err<V>(e: PutError<V>) -> ApiError {
    match e {
        PutError::BadKey { len, .. } => ApiError::new(Code::InvalidKey, format!("key of {len} bytes refused")),
        PutError::TooLarge { len, max, .. } => ApiError::new(
            Code::ValueTooLarge,
            format!("value of {len} bytes exceeds this table's limit of {max} bytes for this key"),
        ),
        PutError::IndexFull { .. } => {
            ApiError::new(Code::TableFull, "no free index slot for this key (configure more items for the table)")
        }
        _ => ApiError::new(Code::Internal, "put refused"),
    }
}

fn shutting_down() -> ApiError {
    ApiError::new(Code::ShuttingDown, "the server is shutting down")
}

fn lost(reason: String) -> ApiError {
    ApiError::new(Code::FileLost, reason)
}

/// A table's listing: its file, its writer's statistics, the hits and misses of the gets this
/// sidecar answered over HTTP (since it started) and, for a table that mirrors Redis, its
/// `mirror` (key prefix and mode).
fn table_json(s: &Shared, t: &TableEntry) -> Result<serde_json::Value, ApiError> {
    let r = t.reader().map_err(|e| ApiError::new(Code::Internal, e.to_string()))?;
    let count = |result| {
        let labels = GetLabels { table: t.name.clone(), result };
        s.metrics.gets.get(&labels).map_or(0, |c| c.get())
    };
    let (hits, misses) = (count("hit"), count("miss"));
    let mut json = serde_json::json!({
        "name": t.name,
        "path": t.path,
        "file_bytes": t.file_size,
        "epoch": r.writer_epoch(),
        "stats": TableStatsJson::new(r.stats(), t.max_items),
        "gets": { "hits": hits, "misses": misses },
    });
    if let Some((_, m)) = crate::near::http::mirror(s, &t.name) {
        json["mirror"] = serde_json::json!({
            "prefix": String::from_utf8_lossy(&m.prefix),
            "mode": if m.prefetch.is_some() { "prefetch" } else { "read-through" },
        });
    }
    Ok(json)
}

/// `GET /v1/tables`: every table's listing and, with an upstream Redis, the near cache's
/// counters under `near` (see `NearStats::json`).
async fn list_tables(State(s): St) -> Result<Json<serde_json::Value>, ApiError> {
    let list = s.tables.values().map(|t| table_json(&s, t)).collect::<Result<Vec<_>, _>>()?;
    let mut json = serde_json::json!({ "tables": list });
    if let Some(near) = s.near.as_deref() {
        json["near"] = near.stats.json();
    }
    Ok(Json(json))
}

async fn table_info(State(s): St, p: Result<Path<String>, PathRejection>) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(name) = p.map_err(path_err)?;
    table_json(&s, table(&s, &name)?).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysQuery {
    limit: Option<usize>,
    cursor: Option<u64>,
    prefix: Option<String>,
}

/// Keys a listing returns when `limit` is not given.
pub const DEFAULT_KEYS_LIMIT: usize = 1000;

/// Most keys one listing returns (`limit` above it is refused): at most 255 bytes a key, an
/// answer stays under ~3 MB. Longer listings page with `cursor`.
pub const MAX_KEYS_LIMIT: usize = 10_000;

/// `GET /v1/tables/{table}/keys?limit=N&cursor=C`: up to `limit` live keys, and `next_cursor`
/// when there are more (pass it as `cursor` for the next page). The cursor is a position in the
/// table's index, not a key: a listing made while the table changes may miss keys written or
/// moved meanwhile, or list one twice, as any scan of a live hash table. Expired keys not yet
/// removed are skipped (the key iteration validates each key as a get does). With `prefix`,
/// only keys that start with it are listed (and count toward `limit`); the scan still walks
/// the whole index, so the cursor works the same.
async fn list_keys(
    State(s): St,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<KeysQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(name) = p.map_err(path_err)?;
    let Query(q) = q.map_err(query_err)?;
    let t = table(&s, &name)?;
    let limit = q.limit.unwrap_or(DEFAULT_KEYS_LIMIT);
    if limit == 0 || limit > MAX_KEYS_LIMIT {
        return Err(ApiError::new(
            Code::BadRequest,
            format!("limit={limit}: 1 to {MAX_KEYS_LIMIT} (page through longer listings with cursor)"),
        ));
    }
    let r = t.reader().map_err(|e| ApiError::new(Code::Internal, e.to_string()))?;
    // The position counts index entries from the start, expired ones included, so a cursor
    // stays valid whatever expires between two pages.
    let start = q.cursor.unwrap_or(0);
    let mut keys = Vec::new();
    let mirrored = crate::near::http::mirror(&s, &name).is_some();
    let mut pos = 0u64;
    let mut next_cursor = None;
    for k in r.keys() {
        pos += 1;
        if pos <= start {
            continue;
        }
        let k = k.map_err(get_err)?;
        if mirrored && !crate::near::cacheable(&k) {
            continue; // a negative entry (a key absent upstream), not a key of the table
        }
        if q.prefix.as_ref().is_some_and(|p| !k.starts_with(p.as_bytes())) {
            continue;
        }
        if keys.len() == limit {
            next_cursor = Some(pos - 1);
            break;
        }
        keys.push(String::from_utf8_lossy(&k).into_owned());
    }
    Ok(Json(serde_json::json!({ "keys": keys, "truncated": next_cursor.is_some(), "next_cursor": next_cursor })))
}

async fn get_key(State(s): St, p: Result<Path<(String, String)>, PathRejection>) -> Result<Response, ApiError> {
    let Path((name, key)) = p.map_err(path_err)?;
    let t = table(&s, &name)?;
    check_key(&key)?;
    if let Some((near, m)) = crate::near::http::mirror(&s, &name) {
        return crate::near::http::get(near, m, key.as_bytes()).await;
    }
    let r = t.reader().map_err(|e| ApiError::new(Code::Internal, e.to_string()))?;
    let mut v = Vec::new();
    let got = r.get_into_with_expiry(key.as_bytes(), &mut v).map_err(get_err)?;
    let result = if got.is_some() { "hit" } else { "miss" };
    s.metrics.gets.get_or_create(&GetLabels { table: name, result }).inc();
    let Some(expiry) = got else {
        return Err(ApiError::new(Code::NotFound, "no such key (absent or expired)"));
    };
    let mut resp = ([(header::CONTENT_TYPE, "application/octet-stream")], v).into_response();
    if let Some(ms) = ttl_left_ms(expiry) {
        resp.headers_mut().insert(TTL_HEADER, ms.into());
    }
    Ok(resp)
}

/// The response header of a key's GET or HEAD that gives the time the value has left, in
/// milliseconds, for a value put with a TTL (absent for one without).
pub const TTL_HEADER: &str = "x-podcache-ttl-ms";

/// Milliseconds `expiry` has left, at least 1 (a value read is not yet expired, and a TTL of 0
/// is refused by a put); `None` for no expiry.
fn ttl_left_ms(expiry: Expiry) -> Option<u64> {
    expiry.remaining().map(|d| (d.as_millis() as u64).max(1))
}

/// Most keys one multi-get asks for.
pub const MAX_MGET_KEYS: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MgetBody {
    keys: Vec<String>,
}

/// `POST /v1/tables/{table}/mget` with `{"keys": ["a", "b"]}`: `{"items": [...]}`, one entry
/// per key in order: `null` if absent or expired, else the item as a dump line has it
/// (`key`, `value` or `value_base64`, and `ttl_ms` if it expires). Each key is a separate get:
/// the answer is not a snapshot of the table.
async fn mget(
    State(s): St,
    p: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(name) = p.map_err(path_err)?;
    let t = table(&s, &name)?;
    if crate::near::http::mirror(&s, &name).is_some() {
        return Err(ApiError::new(
            Code::BadRequest,
            format!("table {name:?} mirrors Redis: get its keys one by one (a miss is filled from Redis)"),
        ));
    }
    let body = body.map_err(body_err)?;
    let req: MgetBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(Code::BadRequest, format!("expected {{\"keys\": [\"...\"]}}: {e}")))?;
    if req.keys.len() > MAX_MGET_KEYS {
        return Err(ApiError::new(
            Code::BadRequest,
            format!("{} keys asked for, at most {MAX_MGET_KEYS} in one multi-get", req.keys.len()),
        ));
    }
    for k in &req.keys {
        check_key(k)?;
    }
    let r = t.reader().map_err(|e| ApiError::new(Code::Internal, e.to_string()))?;
    let mut items = Vec::with_capacity(req.keys.len());
    let (mut hits, mut misses) = (0u64, 0u64);
    let mut v = Vec::new();
    for k in &req.keys {
        match r.get_into_with_expiry(k.as_bytes(), &mut v).map_err(get_err)? {
            Some(expiry) => {
                hits += 1;
                items.push(dump_item(k.as_bytes(), &v, ttl_left_ms(expiry)));
            }
            None => {
                misses += 1;
                items.push(serde_json::Value::Null);
            }
        }
    }
    s.metrics.gets.get_or_create(&GetLabels { table: name.clone(), result: "hit" }).inc_by(hits);
    s.metrics.gets.get_or_create(&GetLabels { table: name, result: "miss" }).inc_by(misses);
    Ok(Json(serde_json::json!({ "items": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutQuery {
    ttl_ms: Option<u64>,
}

fn ttl(ttl_ms: Option<u64>) -> Result<Option<Duration>, ApiError> {
    match ttl_ms {
        Some(0) => Err(ApiError::new(Code::InvalidTtl, "ttl_ms must be at least 1 (omit it for no expiry)")),
        Some(ms) => Ok(Some(Duration::from_millis(ms))),
        None => Ok(None),
    }
}

async fn put_key(
    State(s): St,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<PutQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let Path((name, key)) = p.map_err(path_err)?;
    let Query(q) = q.map_err(|e| ApiError::new(Code::InvalidTtl, format!("bad query string: {e}")))?;
    let t = table(&s, &name)?;
    check_key(&key)?;
    let ttl = ttl(q.ttl_ms)?;
    let body = body.map_err(body_err)?;
    if let Some((near, m)) = crate::near::http::mirror(&s, &name) {
        return crate::near::http::put(near, m, key.as_bytes(), body.to_vec(), ttl).await;
    }
    let mut guard = t.writer();
    let w = guard.as_mut().ok_or_else(shutting_down)?;
    t.check.check().map_err(lost)?;
    match ttl {
        Some(d) => w.put_with_ttl(key.as_bytes(), &body[..], d),
        None => w.put(key.as_bytes(), &body[..]),
    }
    .map_err(put_err)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_key(State(s): St, p: Result<Path<(String, String)>, PathRejection>) -> Result<StatusCode, ApiError> {
    let Path((name, key)) = p.map_err(path_err)?;
    let t = table(&s, &name)?;
    check_key(&key)?;
    if let Some((near, m)) = crate::near::http::mirror(&s, &name) {
        return crate::near::http::delete(near, m, key.as_bytes()).await;
    }
    let mut guard = t.writer();
    let w = guard.as_mut().ok_or_else(shutting_down)?;
    t.check.check().map_err(lost)?;
    if w.delete(key.as_bytes()) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(Code::NotFound, "no such key"))
    }
}

/// One line of a bulk load.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadLine {
    key: Option<String>,
    key_base64: Option<String>,
    value: Option<String>,
    value_base64: Option<String>,
    ttl_ms: Option<u64>,
}

/// A parsed, checked line: key, value, TTL.
type Item = (Vec<u8>, Vec<u8>, Option<Duration>);

/// One NDJSON line of a dump, in the format [`parse_ndjson`] reads: `key` and `value` as JSON
/// strings when they are UTF-8, else `key_base64` / `value_base64` (standard alphabet, padded);
/// `ttl_ms` when the item expires. No newline at the end.
pub(crate) fn dump_line(key: &[u8], value: &[u8], ttl_ms: Option<u64>) -> String {
    dump_item(key, value, ttl_ms).to_string()
}

/// The JSON object of [`dump_line`].
fn dump_item(key: &[u8], value: &[u8], ttl_ms: Option<u64>) -> serde_json::Value {
    let mut line = serde_json::Map::new();
    for (name, bytes) in [("key", key), ("value", value)] {
        match std::str::from_utf8(bytes) {
            Ok(text) => line.insert(name.into(), text.into()),
            Err(_) => {
                line.insert(format!("{name}_base64"), base64::engine::general_purpose::STANDARD.encode(bytes).into())
            }
        };
    }
    if let Some(ms) = ttl_ms {
        line.insert("ttl_ms".into(), ms.into());
    }
    serde_json::Value::Object(line)
}

/// Parse a whole NDJSON body; any bad line fails the whole load (nothing is stored).
pub(crate) fn parse_ndjson(body: &[u8]) -> Result<Vec<Item>, ApiError> {
    let mut items = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        if line.trim_ascii().is_empty() {
            continue;
        }
        let bad = |m: String| ApiError::new(Code::InvalidNdjson, format!("line {n}: {m} (nothing was loaded)"));
        let l: LoadLine = serde_json::from_slice(line).map_err(|e| bad(e.to_string()))?;
        let either = |name: &str, text: Option<String>, b64: Option<String>| match (text, b64) {
            (Some(v), None) => Ok(v.into_bytes()),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|e| bad(format!("{name}_base64: {e}"))),
            _ => Err(bad(format!("exactly one of \"{name}\" and \"{name}_base64\" is required"))),
        };
        let key = either("key", l.key, l.key_base64)?;
        let value = either("value", l.value, l.value_base64)?;
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(bad(format!("key of {} bytes (1 to {MAX_KEY} allowed)", key.len())));
        }
        let ttl = ttl(l.ttl_ms).map_err(|e| bad(e.message))?;
        items.push((key, value, ttl));
    }
    Ok(items)
}

async fn load(
    State(s): St,
    p: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(name) = p.map_err(path_err)?;
    let t = table(&s, &name)?;
    if crate::near::http::mirror(&s, &name).is_some() {
        return Err(ApiError::new(
            Code::BadRequest,
            format!("table {name:?} mirrors Redis: write its keys with PUT (written through to Redis), not load"),
        ));
    }
    let body = body.map_err(body_err)?;
    let items = parse_ndjson(&body)?;
    // One lock for the whole load: it is applied as a batch.
    let mut guard = t.writer();
    let w = guard.as_mut().ok_or_else(shutting_down)?;
    t.check.check().map_err(lost)?;
    for (i, (k, v, ttl)) in items.iter().enumerate() {
        let max = w.max_value(k.len(), ttl.is_some());
        if v.len() > max {
            return Err(ApiError::new(
                Code::ValueTooLarge,
                format!(
                    "item {}: value of {} bytes exceeds the table's limit of {max} (nothing was loaded)",
                    i + 1,
                    v.len()
                ),
            ));
        }
    }
    let mut loaded = 0u64;
    for (k, v, ttl) in &items {
        let r = match ttl {
            Some(d) => w.put_with_ttl(k, &v[..], *d),
            None => w.put(k, &v[..]),
        };
        if let Err(e) = r {
            let mut err = put_err(e);
            err.message = format!("{} (after {loaded} items were loaded)", err.message);
            return Err(err);
        }
        loaded += 1;
    }
    Ok(Json(serde_json::json!({ "loaded": loaded })))
}

async fn list_rings(State(s): St) -> Result<Json<serde_json::Value>, ApiError> {
    let mut list = Vec::new();
    let mut buf = Vec::new();
    for r in s.rings.values() {
        let stats = ring_stats(&r.path, r.capacity, &mut buf).map_err(|e| ApiError::new(Code::Internal, e))?;
        let subs: Vec<_> = s
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|sub| sub.ring == r.name)
            .map(|sub| {
                // Relaxed: statistics.
                let delivered = sub.delivered.load(std::sync::atomic::Ordering::Relaxed);
                serde_json::json!({
                    "delivered_seq": delivered,
                    "lag": stats.newest_seq.saturating_sub(delivered),
                    "lost": sub.lost.load(std::sync::atomic::Ordering::Relaxed),
                })
            })
            .collect();
        list.push(serde_json::json!({
            "name": r.name, "path": r.path, "file_bytes": r.file_size, "stats": stats, "subscriptions": subs,
        }));
    }
    Ok(Json(serde_json::json!({ "rings": list })))
}

async fn publish(
    State(s): St,
    p: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(name) = p.map_err(path_err)?;
    let r = ring(&s, &name)?;
    let body = body.map_err(body_err)?;
    let mut guard = r.publisher();
    let p = guard.as_mut().ok_or_else(shutting_down)?;
    r.check.check().map_err(lost)?;
    match p.publish(&body) {
        Ok(seq) => Ok(Json(serde_json::json!({ "seq": seq }))),
        Err(PublishError::Empty) => Err(ApiError::new(Code::BadRequest, "empty message (messages are 1 byte or more)")),
        Err(e @ PublishError::TooLarge { .. }) => Err(ApiError::new(Code::MessageTooLarge, e.to_string())),
        Err(e) => Err(ApiError::new(Code::Internal, e.to_string())),
    }
}

/// Most ring subscriptions open at once (each holds a thread of the blocking pool).
pub const MAX_SUBSCRIBERS: usize = 256;

/// A counted subscription; released when the subscription's thread ends.
struct SubscriberSlot(Arc<Shared>, Option<Arc<Subscription>>);

/// What one open subscription has delivered, for `GET /v1/rings` and `podcache stat`.
#[derive(Debug)]
pub(crate) struct Subscription {
    /// The ring.
    pub(crate) ring: String,
    /// Sequence number of the last message handed to the client's connection (before the
    /// first one: the one before where it started).
    pub(crate) delivered: std::sync::atomic::AtomicU64,
    /// Messages the ring lapped it by, in total.
    pub(crate) lost: std::sync::atomic::AtomicU64,
}

impl SubscriberSlot {
    /// Count this subscription and list it as having delivered up to `delivered`.
    fn track(&mut self, ring: &str, delivered: u64) -> Arc<Subscription> {
        let sub = Arc::new(Subscription { ring: ring.to_string(), delivered: delivered.into(), lost: 0.into() });
        self.0.subscriptions.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::clone(&sub));
        self.1 = Some(Arc::clone(&sub));
        sub
    }

    fn take(s: &Arc<Shared>) -> Result<SubscriberSlot, ApiError> {
        let n = s.subscribers.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let slot = SubscriberSlot(Arc::clone(s), None);
        if n >= MAX_SUBSCRIBERS {
            return Err(ApiError::new(
                Code::TooManySubscribers,
                format!("{MAX_SUBSCRIBERS} subscriptions are open; close one or read the ring with the reader library"),
            ));
        }
        Ok(slot)
    }
}

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        if let Some(sub) = self.1.take() {
            self.0.subscriptions.lock().unwrap_or_else(|e| e.into_inner()).retain(|s| !Arc::ptr_eq(s, &sub));
        }
        self.0.subscribers.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubQuery {
    from: Option<String>,
}

/// An event and the bytes it takes in a subscription's queue.
fn sized_event(name: &str, id: Option<u64>, data: String) -> (Event, usize) {
    // The name, id and framing take a few dozen bytes besides the data.
    let n = data.len() + 64;
    let mut ev = Event::default().event(name);
    if let Some(id) = id {
        ev = ev.id(id.to_string());
    }
    (ev.data(data), n)
}

fn message_event(seq: u64, lost: u64, payload: &[u8]) -> (Event, usize) {
    let data = match std::str::from_utf8(payload) {
        Ok(text) => serde_json::json!({ "seq": seq, "lost": lost, "value": text }),
        Err(_) => serde_json::json!({
            "seq": seq, "lost": lost,
            "value_base64": base64::engine::general_purpose::STANDARD.encode(payload),
        }),
    };
    sized_event("message", Some(seq), data.to_string())
}

/// Where a subscription starts: `?from=newest` (default), `oldest`, or a sequence number; a
/// reconnecting EventSource's `Last-Event-ID: N` (when `from` is absent) resumes at `N + 1`.
fn start_of(from: Option<&str>, last_event_id: Option<&axum::http::HeaderValue>) -> Result<Start, ApiError> {
    let bad = |m: String| ApiError::new(Code::BadRequest, m);
    match from {
        Some("newest") => Ok(Start::Newest),
        Some("oldest") => Ok(Start::Oldest),
        Some(n) => match n.parse::<u64>() {
            Ok(seq) if seq >= 1 => Ok(Start::Seq(seq)),
            _ => Err(bad(format!("from={n:?}: use oldest, newest or a sequence number (1 or more)"))),
        },
        None => match last_event_id {
            None => Ok(Start::Newest),
            Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
                Some(id) => Ok(Start::Seq(id.saturating_add(1))),
                None => Err(bad("Last-Event-ID is not a sequence number".into())),
            },
        },
    }
}

/// A subscription's start (see [`start_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    Oldest,
    Newest,
    /// The first sequence number to deliver: earlier messages still in the ring are skipped, and
    /// if it is no longer in the ring the first event is `lapped` with how many are gone.
    Seq(u64),
}

async fn subscribe(
    State(s): St,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<SubQuery>, QueryRejection>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let Path(name) = p.map_err(path_err)?;
    let Query(q) = q.map_err(query_err)?;
    let r = ring(&s, &name)?;
    let start = start_of(q.from.as_deref(), headers.get("last-event-id"))?;
    let mut slot = SubscriberSlot::take(&s)?;
    let mut sub = crate::server::open_subscriber(r, start == Start::Newest)
        .map_err(|e| ApiError::new(Code::Internal, e.to_string()))?;
    // Where it starts: lag counts from there.
    let before_start = match start {
        Start::Seq(n) => n.saturating_sub(1),
        Start::Newest => sub.writer_next_seq().saturating_sub(1),
        _ => ring_stats(&r.path, r.capacity, &mut Vec::new()).map_or(0, |st| st.oldest_seq.saturating_sub(1)),
    };
    let progress = slot.track(&r.name, before_start);
    let thread_progress = Arc::clone(&progress);
    // Resuming: the next sequence number still to deliver (`None`: deliver everything).
    let mut resume_at = match start {
        Start::Seq(n) => Some(n),
        _ => None,
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(Event, usize, Option<u64>)>();
    let queue = Arc::new(EventQueue::default());
    let shared = Arc::clone(&s);
    let ring_name = r.name.clone();
    let q = Arc::clone(&queue);
    // The subscriber blocks (futex) between messages: it lives on a blocking thread and hands
    // events to the response stream through a queue bounded in bytes (`SSE_QUEUE_BYTES`). A
    // client that does not read fills the queue; the thread then stops reading the ring, the
    // ring laps it, and when the client reads again the next event is `lapped`, saying how many
    // messages it lost. Nothing beyond the bound is buffered for a stalled client.
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut buf = vec![0u8; sub.max_message()];
        let give_up = || shared.is_shutting_down() || tx.is_closed();
        let send_seq = |(ev, n): (Event, usize), seq| q.reserve(n, &give_up) && tx.send((ev, n, seq)).is_ok();
        let send = |ev| send_seq(ev, None);
        loop {
            if give_up() {
                return;
            }
            match sub.recv_timeout(&mut buf, Duration::from_millis(100)) {
                Ok(Some(m)) => {
                    if let Some(from) = resume_at {
                        if m.seq < from {
                            continue; // delivered before the client reconnected
                        }
                        resume_at = None;
                        if m.seq > from {
                            // Gone from the ring before the client came back.
                            let gone = m.seq - from;
                            let lapped = serde_json::json!({ "lost": gone, "lost_total": gone, "laps": 0 });
                            if !send(sized_event("lapped", None, lapped.to_string())) {
                                return;
                            }
                        }
                    }
                    if m.lost > 0 {
                        // Relaxed: a statistic, read by listings.
                        thread_progress.lost.store(sub.lost(), std::sync::atomic::Ordering::Relaxed);
                        let lapped =
                            serde_json::json!({ "lost": m.lost, "lost_total": sub.lost(), "laps": sub.laps() });
                        if !send(sized_event("lapped", None, lapped.to_string())) {
                            return;
                        }
                    }
                    if !send_seq(message_event(m.seq, m.lost, &buf[..m.len]), Some(m.seq)) {
                        return;
                    }
                }
                Ok(None) => {}
                Err(RecvError::Overrun) => {}
                Err(e) => {
                    tracing::warn!(ring = %ring_name, "subscription ended: {e}");
                    let data = serde_json::json!({ "error": { "code": "corrupt", "message": e.to_string() } });
                    let _ = send(sized_event("error", None, data.to_string()));
                    return;
                }
            }
            if sub.is_retired() {
                let _ = send(sized_event("retired", None, "{}".into()));
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(move |(ev, n, seq)| {
        queue.release(n);
        if let Some(seq) = seq {
            // Relaxed: a statistic, read by listings.
            progress.delivered.store(seq, std::sync::atomic::Ordering::Relaxed);
        }
        Ok::<_, std::convert::Infallible>(ev)
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// Most bytes of events a subscription queues for a client that does not read them (plus the
/// one event being queued, if it alone is larger). Beyond it the subscription stops reading the
/// ring and the ring laps it. See [`crate::http::CONNECTION_BUFFER_BYTES`] for what the
/// connection itself buffers.
pub const SSE_QUEUE_BYTES: usize = 256 << 10;

/// The byte count of a subscription's queued events, shared by its thread and its response.
#[derive(Default)]
struct EventQueue {
    bytes: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

impl EventQueue {
    /// Wait until `n` more bytes fit (an event larger than the bound fits an empty queue);
    /// `false` if `give_up` turned true meanwhile (checked every 100 ms).
    fn reserve(&self, n: usize, give_up: &dyn Fn() -> bool) -> bool {
        let mut q = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        while *q > 0 && *q + n > SSE_QUEUE_BYTES {
            if give_up() {
                return false;
            }
            q = self.freed.wait_timeout(q, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
        }
        *q += n;
        true
    }

    /// `n` bytes left the queue (handed to the connection).
    fn release(&self, n: usize) {
        let mut q = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        *q = q.saturating_sub(n);
        self.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson() {
        let ok = parse_ndjson(
            b"{\"key\":\"a\",\"value\":\"1\"}\n\n{\"key\":\"b\",\"value_base64\":\"AAE=\",\"ttl_ms\":5}\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].1, vec![0, 1]);
        assert_eq!(ok[1].2, Some(Duration::from_millis(5)));
        for bad in [
            &b"{\"key\":\"a\"}"[..],
            b"{\"key\":\"a\",\"value\":\"1\",\"extra\":1}",
            b"not json",
            b"{\"key\":\"\",\"value\":\"1\"}",
            b"{\"key\":\"a\",\"value\":\"1\",\"ttl_ms\":0}",
            b"{\"key\":\"a\",\"value\":\"1\",\"value_base64\":\"AA==\"}",
            b"{\"key\":\"a\",\"key_base64\":\"AA==\",\"value\":\"1\"}",
            b"{\"key_base64\":\"\",\"value\":\"1\"}",
            b"{\"key_base64\":\"!!\",\"value\":\"1\"}",
        ] {
            let e = parse_ndjson(bad).unwrap_err();
            assert_eq!(e.code, Code::InvalidNdjson, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn dump_lines_parse_back_to_the_same_items() {
        let items: [(&[u8], &[u8], Option<u64>); 4] = [
            (b"plain", b"text \"quoted\"\n", None),
            (b"\xff\x00key", b"v", Some(1)),
            (b"k", b"\x80\x81", Some(86_400_000)),
            ("\u{e9}t\u{e9}".as_bytes(), b"", None),
        ];
        let body: String = items.iter().map(|(k, v, t)| dump_line(k, v, *t) + "\n").collect();
        let parsed = parse_ndjson(body.as_bytes()).unwrap();
        assert_eq!(parsed.len(), items.len());
        for ((k, v, t), (pk, pv, pt)) in items.iter().zip(&parsed) {
            assert_eq!((&pk[..], &pv[..]), (*k, *v));
            assert_eq!(*pt, t.map(Duration::from_millis));
        }
        assert!(dump_line(b"\xff", b"x", None).contains("\"key_base64\":\"/w==\""));
    }
}
