//! Server-side idempotency keys for gRPC methods, as a tower layer any
//! service puts in front of its routes (with its own database).
//!
//! A request carrying `idempotency-key` metadata is hashed (method + message
//! bytes) and claimed in the `idempotency_keys` table before it runs:
//! - first time: it runs; a final answer (success or a client error) is
//!   stored with the key, with its HTTP hints (`kit::reply`); a server-side
//!   failure, or an answer that is only "accepted" (202: the work goes on),
//!   frees the key so a retry runs again;
//! - same key, same request, finished: the stored answer is replayed, the
//!   method does not run again (`idempotent-replayed: true` in the headers);
//! - same key, same request, still running: ABORTED, "in progress". A claim
//!   past its lease is taken over (its process died): the lease is the
//!   caller's deadline plus a second (the server drops a call at its
//!   deadline, so none runs longer), at most `lease`;
//! - same key, different request: INVALID_ARGUMENT, with the HTTP hint 422
//!   (the IETF idempotency-key draft's "Unprocessable Content");
//! - a request body over `max_body_bytes` is refused before it is read whole:
//!   the layer buffers what it hashes, and that must stay bounded.
//!
//! Keys are scoped to the caller (`x-client-id`, `x-user-id` metadata, as the
//! gateway sends them): one client's key never replays another's answer.
//! Keys live at least `retention` (24 h by default), then a sweep deletes them.
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use kit_core::reason::Reason;
use kit_resilience::signals;
use sha2::{Digest, Sha256};
use sqlx::Row;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::db::Db;
use kit_core::time::now_millis;
use kit_resilience::BoxError;

pub const METADATA_KEY: &str = "idempotency-key";
const REPLAYED: &str = "idempotent-replayed";

/// Portable DDL (SQLite and PostgreSQL), created on open.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS idempotency_keys (
    key           TEXT PRIMARY KEY,
    request_hash  TEXT NOT NULL,
    state         TEXT NOT NULL,
    response      TEXT,
    grpc_status   BIGINT,
    grpc_message  TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    lease_until_ms BIGINT NOT NULL DEFAULT 0,
    reply_headers TEXT
)";

/// How long past the caller's deadline a claim still counts as running.
const DEADLINE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    /// How long a key is remembered.
    pub retention: Duration,
    /// A claim not finished within this is considered abandoned (sooner when
    /// the call carries a shorter deadline).
    pub lease: Duration,
    /// The largest request body an idempotent call may have.
    pub max_body_bytes: usize,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self { retention: Duration::from_secs(24 * 3600), lease: Duration::from_secs(60), max_body_bytes: 256 * 1024 }
    }
}

/// A finished call's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub body: Bytes,
    pub code: Code,
    pub message: String,
    /// Its HTTP hints (`kit::reply`: `x-http-code`, `location`), replayed with it.
    pub hints: Vec<(String, String)>,
}

/// The response headers a replay must carry again (a refusal's reason too:
/// a replayed decline is still CARD_DECLINED).
const REPLAYED_HEADERS: [&str; 3] = [crate::reply::HTTP_CODE, crate::reply::LOCATION, signals::REASON];

fn hints_of(headers: &http::HeaderMap) -> Vec<(String, String)> {
    REPLAYED_HEADERS
        .iter()
        .filter_map(|name| Some((name.to_string(), headers.get(*name)?.to_str().ok()?.to_string())))
        .collect()
}

#[derive(Debug, PartialEq)]
pub enum Claim {
    /// Ours to run.
    Fresh,
    Replay(Stored),
    InProgress,
    Mismatch,
}

pub struct IdempotencyStore {
    db: Db,
    config: IdempotencyConfig,
}

impl IdempotencyStore {
    pub async fn open(db: Db, config: IdempotencyConfig) -> Result<Self, sqlx::Error> {
        sqlx::query(SCHEMA).execute(db.pool()).await?;
        // Tables made before a column existed get it.
        for (column, definition) in [("lease_until_ms", "BIGINT NOT NULL DEFAULT 0"), ("reply_headers", "TEXT")] {
            let probe = format!("SELECT {column} FROM idempotency_keys WHERE 1 = 0");
            if sqlx::query(sqlx::AssertSqlSafe(probe)).execute(db.pool()).await.is_err() {
                let alter = format!("ALTER TABLE idempotency_keys ADD COLUMN {column} {definition}");
                sqlx::query(sqlx::AssertSqlSafe(alter)).execute(db.pool()).await?;
            }
        }
        Ok(Self { db, config })
    }

    /// How long a claim for a call with `deadline` left may run.
    fn lease_ms(&self, deadline: Option<Duration>) -> i64 {
        let lease = deadline.map_or(self.config.lease, |left| (left + DEADLINE_GRACE).min(self.config.lease));
        lease.as_millis() as i64
    }

    /// Claims `key` for a request hashing to `hash`, at `now_ms`, for a call
    /// with `deadline` left (`None`: no deadline).
    pub async fn claim(
        &self,
        key: &str,
        hash: &str,
        now_ms: i64,
        deadline: Option<Duration>,
    ) -> Result<Claim, sqlx::Error> {
        let lease_until = now_ms + self.lease_ms(deadline);
        for _ in 0..2 {
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys \
                 (key, request_hash, state, created_at_ms, updated_at_ms, expires_at_ms, lease_until_ms) \
                 VALUES ($1, $2, 'in_progress', $3, $3, $4, $5) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(hash)
            .bind(now_ms)
            .bind(now_ms + self.config.retention.as_millis() as i64)
            .bind(lease_until)
            .execute(self.db.pool())
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok(Claim::Fresh);
            }
            let Some(row) = sqlx::query(
                "SELECT request_hash, state, response, grpc_status, grpc_message, updated_at_ms, expires_at_ms, \
                 lease_until_ms, reply_headers FROM idempotency_keys WHERE key = $1",
            )
            .bind(key)
            .fetch_optional(self.db.pool())
            .await?
            else {
                continue; // deleted in between: claim again
            };
            let expires: i64 = row.try_get("expires_at_ms")?;
            if expires <= now_ms {
                sqlx::query("DELETE FROM idempotency_keys WHERE key = $1 AND expires_at_ms <= $2")
                    .bind(key)
                    .bind(now_ms)
                    .execute(self.db.pool())
                    .await?;
                continue;
            }
            if row.try_get::<String, _>("request_hash")? != hash {
                return Ok(Claim::Mismatch);
            }
            if row.try_get::<String, _>("state")? == "done" {
                let body = row.try_get::<Option<String>, _>("response")?.unwrap_or_default();
                let body = STANDARD.decode(body).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                let code = row.try_get::<Option<i64>, _>("grpc_status")?.unwrap_or(0);
                let hints = row.try_get::<Option<String>, _>("reply_headers")?.unwrap_or_default();
                return Ok(Claim::Replay(Stored {
                    body: Bytes::from(body),
                    code: Code::from(code as i32),
                    message: row.try_get::<Option<String>, _>("grpc_message")?.unwrap_or_default(),
                    hints: serde_json::from_str(&hints).unwrap_or_default(),
                }));
            }
            let updated: i64 = row.try_get("updated_at_ms")?;
            if row.try_get::<i64, _>("lease_until_ms")? < now_ms {
                // Abandoned by a process that died mid-call: take it over.
                let taken = sqlx::query(
                    "UPDATE idempotency_keys SET updated_at_ms = $1, lease_until_ms = $2 \
                     WHERE key = $3 AND state = 'in_progress' AND updated_at_ms = $4",
                )
                .bind(now_ms)
                .bind(lease_until)
                .bind(key)
                .bind(updated)
                .execute(self.db.pool())
                .await?;
                if taken.rows_affected() == 1 {
                    tracing::warn!(idempotency_key = key, "took over an abandoned idempotency claim");
                    return Ok(Claim::Fresh);
                }
            }
            return Ok(Claim::InProgress);
        }
        Ok(Claim::InProgress)
    }

    pub async fn complete(&self, key: &str, stored: &Stored, now_ms: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE idempotency_keys SET state = 'done', response = $1, grpc_status = $2, grpc_message = $3, \
             updated_at_ms = $4, reply_headers = $5 WHERE key = $6",
        )
        .bind(STANDARD.encode(&stored.body))
        .bind(stored.code as i64)
        .bind(&stored.message)
        .bind(now_ms)
        .bind(serde_json::to_string(&stored.hints).unwrap_or_default())
        .bind(key)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Frees a key whose call failed on the server side, so a retry runs.
    pub async fn release(&self, key: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM idempotency_keys WHERE key = $1 AND state = 'in_progress'")
            .bind(key)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Sweeps expired keys every minute until `shutdown`.
    pub fn spawn_sweeper(
        self: Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => match self.sweep(now_millis()).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(deleted = n, "expired idempotency keys swept"),
                        Err(err) => tracing::warn!(error = %err, "idempotency sweep failed; retrying next minute"),
                    },
                }
            }
        })
    }

    /// Deletes expired keys; returns how many.
    pub async fn sweep(&self, now_ms: i64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at_ms <= $1")
            .bind(now_ms)
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected())
    }
}

/// The request's identity for its key: method and message bytes.
pub fn request_hash(path: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(path.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Codes after which the call may be tried again: the key is freed.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Unknown
            | Code::Aborted
            | Code::Cancelled
    )
}

fn status_of(headers: &http::HeaderMap) -> Option<(Code, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).map(percent_decode).unwrap_or_default();
    Some((Code::from(code), message))
}

/// grpc-message is percent-encoded on the wire.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `client|user|key`, from the caller's metadata.
fn scoped_key(headers: &http::HeaderMap, key: &str) -> String {
    let caller = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    format!("{}|{}|{key}", caller("x-client-id"), caller("x-user-id"))
}

fn replay(stored: &Stored) -> http::Response<Body> {
    let mut response = if stored.code == Code::Ok {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames =
            futures::stream::iter([Ok::<_, Status>(Frame::data(stored.body.clone())), Ok(Frame::trailers(trailers))]);
        let mut response = http::Response::new(Body::new(StreamBody::new(frames)));
        response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        response
    } else {
        Status::new(stored.code, stored.message.clone()).into_http::<Body>()
    };
    for (name, value) in &stored.hints {
        if let (Ok(name), Ok(value)) = (http::HeaderName::try_from(name.as_str()), http::HeaderValue::from_str(value)) {
            response.headers_mut().insert(name, value);
        }
    }
    response.headers_mut().insert(REPLAYED, http::HeaderValue::from_static("true"));
    response
}

/// Frees a key after a failed call; if that fails too, the claim waits out
/// its lease before a retry may take it over.
async fn release_or_warn(store: &IdempotencyStore, key: &str) {
    if let Err(err) = store.release(key).await {
        tracing::warn!(idempotency_key = key, error = %err, "could not free an idempotency key; it frees itself after the lease");
    }
}

fn refuse(status: Status) -> http::Response<Body> {
    status.into_http::<Body>()
}

#[derive(Clone)]
pub struct IdempotencyLayer {
    store: Arc<IdempotencyStore>,
}

impl IdempotencyLayer {
    pub fn new(store: Arc<IdempotencyStore>) -> Self {
        Self { store }
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotent<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotent { inner, store: self.store.clone() }
    }
}

#[derive(Clone)]
pub struct Idempotent<S> {
    inner: S,
    store: Arc<IdempotencyStore>,
}

impl<S> Service<http::Request<Body>> for Idempotent<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(key) = request.headers().get(METADATA_KEY).map(|v| v.to_str().map(str::to_string)) else {
            return Box::pin(async move { inner.call(request).await.map_err(Into::into) });
        };
        let store = self.store.clone();
        Box::pin(async move {
            let key = match key {
                Ok(key) if !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic()) => key,
                _ => {
                    return Ok(refuse(Status::invalid_argument(
                        "idempotency-key must be 1-255 visible ASCII characters",
                    )));
                }
            };
            // Keys are the caller's: two clients (or users) choosing the same
            // key must not see each other's answers.
            let key = scoped_key(request.headers(), &key);
            let (parts, body) = request.into_parts();
            let limit = store.config.max_body_bytes;
            let body = match http_body_util::Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(err) if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                    metrics::counter!("idempotency_requests_total", "outcome" => "too_large").increment(1);
                    return Ok(refuse(Status::invalid_argument(format!(
                        "request larger than {limit} bytes: too large for an idempotent call"
                    ))));
                }
                Err(err) => return Err(err),
            };
            let hash = request_hash(parts.uri.path(), &body);
            let deadline = kit_resilience::signals::grpc_timeout(&parts.headers);
            let claim = match store.claim(&key, &hash, now_millis(), deadline).await {
                Ok(claim) => claim,
                Err(err) => {
                    tracing::error!(error = %err, "idempotency store failed");
                    return Ok(refuse(Status::unavailable("idempotency store unavailable; retry")));
                }
            };
            let outcome = match claim {
                Claim::Fresh => "fresh",
                Claim::Replay(stored) => {
                    metrics::counter!("idempotency_requests_total", "outcome" => "replayed").increment(1);
                    return Ok(replay(&stored));
                }
                Claim::InProgress => {
                    metrics::counter!("idempotency_requests_total", "outcome" => "in_progress").increment(1);
                    let status = Status::aborted("a request with this idempotency key is in progress; retry shortly");
                    return Ok(refuse(signals::with_reason(status, Reason::IdempotencyInProgress)));
                }
                Claim::Mismatch => {
                    metrics::counter!("idempotency_requests_total", "outcome" => "mismatch").increment(1);
                    let status = Status::invalid_argument("this idempotency key was used with a different request");
                    let mut status = signals::with_reason(status, Reason::IdempotencyKeyReused);
                    status
                        .metadata_mut()
                        .insert(crate::reply::HTTP_CODE, tonic::metadata::MetadataValue::from_static("422"));
                    return Ok(refuse(status));
                }
            };
            metrics::counter!("idempotency_requests_total", "outcome" => outcome).increment(1);
            let request = http::Request::from_parts(parts, Body::new(Full::new(body)));
            let response = match inner.call(request).await {
                Ok(response) => response,
                Err(err) => {
                    release_or_warn(&store, &key).await;
                    return Err(err.into());
                }
            };
            // Read the whole answer (unary) to store it, then hand it on.
            let (parts, body) = response.into_parts();
            let hints = hints_of(&parts.headers);
            let (stored, trailers) = match status_of(&parts.headers) {
                Some((code, message)) => (Stored { body: Bytes::new(), code, message, hints }, None),
                None => {
                    let collected = match body.collect().await {
                        Ok(collected) => collected,
                        Err(status) => {
                            release_or_warn(&store, &key).await;
                            return Ok(refuse(status));
                        }
                    };
                    let trailers = collected.trailers().cloned();
                    let (code, message) =
                        trailers.as_ref().and_then(status_of).unwrap_or((Code::Unknown, "no status".into()));
                    (Stored { body: collected.to_bytes(), code, message, hints }, trailers)
                }
            };
            // Only accepted (202): the work goes on, and a retry must hear how it stands then.
            let saved = if retryable(stored.code) || crate::reply::is_accepted(&parts.headers) {
                store.release(&key).await
            } else {
                store.complete(&key, &stored, now_millis()).await
            };
            if let Err(err) = saved {
                // The call happened; a retry would repeat it. Say so loudly.
                tracing::error!(error = %err, idempotency_key = %key, "could not record an idempotent result");
            }
            let body = match trailers {
                // Trailers-only: the status was in the headers.
                None => Body::empty(),
                Some(trailers) => Body::new(StreamBody::new(futures::stream::iter([
                    Ok::<_, Status>(Frame::data(stored.body.clone())),
                    Ok(Frame::trailers(trailers)),
                ]))),
            };
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_differ_by_method_and_body() {
        let a = request_hash("/a.S/M", b"x");
        assert_eq!(a, request_hash("/a.S/M", b"x"));
        assert_ne!(a, request_hash("/a.S/N", b"x"));
        assert_ne!(a, request_hash("/a.S/M", b"y"));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode("out%20of%20stock"), "out of stock");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
