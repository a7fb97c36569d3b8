//! Redis Streams as the broker: XADD with an approximate MAXLEN, consumer
//! groups created on first use (XGROUP CREATE … 0 MKSTREAM, again after a
//! Redis restart lost them), XAUTOCLAIM for entries idle on a consumer that
//! went quiet, XREADGROUP for new ones, XACK, a `<stream>:dead` stream for
//! dead letters and a `<stream>:epoch` key that a Redis without persistence
//! loses with the rest on a restart.
use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Value};
use tokio::sync::OnceCell;

use crate::{Broker, Delivery, Message, Published, QueueError, Receive, Stats};

const FIELDS: [&str; 6] = ["key", "kind", "payload", "event_id", "traceparent", "published_at_ms"];

pub struct RedisStreams {
    client: redis::Client,
    /// Short calls, multiplexed.
    shared: OnceCell<ConnectionManager>,
    /// Blocking reads, one connection each (a blocked XREADGROUP would hold
    /// up every call multiplexed behind it), kept between reads.
    blocking: tokio::sync::Mutex<Vec<ConnectionManager>>,
    max_length: u64,
    timeout: Duration,
}

fn unavailable(err: RedisError) -> QueueError {
    // An error code (NOGROUP, BUSYGROUP, WRONGTYPE …) is the server's answer; anything else is the way to it.
    if err.code().is_some() { QueueError::Refused(err.to_string()) } else { QueueError::Unavailable(err.to_string()) }
}

fn is_nogroup(err: &QueueError) -> bool {
    matches!(err, QueueError::Refused(message) if message.contains("NOGROUP"))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

fn array(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) => items,
        _ => &[],
    }
}

/// `[id, [field, value, …]]` → the entry's id and message.
fn entry(value: &Value) -> Option<(String, Message)> {
    let [id, fields] = array(value) else { return None };
    let id = text(id)?;
    let mut message = Message::default();
    for pair in array(fields).chunks(2) {
        let [name, value] = pair else { continue };
        let value = text(value).unwrap_or_default();
        match text(name).as_deref() {
            Some("key") => message.key = value,
            Some("kind") => message.kind = value,
            Some("payload") => message.payload = value,
            Some("event_id") => message.event_id = value,
            Some("traceparent") => message.traceparent = value,
            Some("published_at_ms") => message.published_at_ms = value.parse().unwrap_or_default(),
            _ => {}
        }
    }
    Some((id, message))
}

/// A flat `[name, value, …]` reply (XINFO) as pairs.
fn pairs(value: &Value) -> impl Iterator<Item = (String, &Value)> {
    array(value).chunks(2).filter_map(|pair| match pair {
        [name, value] => Some((text(name)?, value)),
        _ => None,
    })
}

impl RedisStreams {
    pub fn new(url: &str, max_length: u64, timeout: Duration) -> Result<Self, QueueError> {
        let client = redis::Client::open(url).map_err(|e| QueueError::Refused(format!("redis URL: {e}")))?;
        Ok(Self { client, shared: OnceCell::new(), blocking: tokio::sync::Mutex::new(Vec::new()), max_length, timeout })
    }

    async fn manager(&self, response_timeout: Duration) -> Result<ConnectionManager, QueueError> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        tokio::time::timeout(self.timeout, self.client.get_connection_manager_with_config(config))
            .await
            .map_err(|_| QueueError::Unavailable("connecting to redis timed out".into()))?
            .map_err(unavailable)
    }

    async fn shared(&self) -> Result<ConnectionManager, QueueError> {
        self.shared.get_or_try_init(|| self.manager(self.timeout)).await.cloned()
    }

    async fn query(&self, cmd: &redis::Cmd) -> Result<Value, QueueError> {
        let mut conn = self.shared().await?;
        tokio::time::timeout(self.timeout, cmd.query_async::<Value>(&mut conn))
            .await
            .map_err(|_| QueueError::Unavailable("redis did not answer in time".into()))?
            .map_err(unavailable)
    }

    async fn create_group(&self, stream: &str, group: &str) -> Result<(), QueueError> {
        match self.query(redis::cmd("XGROUP").arg("CREATE").arg(stream).arg(group).arg("0").arg("MKSTREAM")).await {
            Ok(_) => Ok(()),
            Err(QueueError::Refused(message)) if message.contains("BUSYGROUP") => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// The epoch key, set when missing: a Redis that lost its data lost it too.
    async fn epoch(&self, stream: &str) -> Result<String, QueueError> {
        let key = format!("{stream}:epoch");
        let fresh = uuid::Uuid::now_v7().simple().to_string();
        self.query(redis::cmd("SET").arg(&key).arg(&fresh).arg("NX")).await?;
        text(&self.query(redis::cmd("GET").arg(&key)).await?)
            .ok_or_else(|| QueueError::Protocol("the epoch key vanished".into()))
    }

    async fn claim(&self, request: &Receive<'_>) -> Result<Vec<Delivery>, QueueError> {
        let reply = self
            .query(
                redis::cmd("XAUTOCLAIM")
                    .arg(request.stream)
                    .arg(request.group)
                    .arg(request.consumer)
                    .arg(request.claim_idle.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(request.max),
            )
            .await?;
        let claimed: Vec<(String, Message)> =
            array(&reply).get(1).map(array).unwrap_or(&[]).iter().filter_map(entry).collect();
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        // XAUTOCLAIM raised their delivery counts; XPENDING tells them.
        let first = &claimed[0].0;
        let last = &claimed[claimed.len() - 1].0;
        let pending = self
            .query(
                redis::cmd("XPENDING")
                    .arg(request.stream)
                    .arg(request.group)
                    .arg(first)
                    .arg(last)
                    .arg(claimed.len().max(request.max))
                    .arg(request.consumer),
            )
            .await?;
        let counts: std::collections::HashMap<String, u32> = array(&pending)
            .iter()
            .filter_map(|row| match array(row) {
                [id, _consumer, _idle, count, ..] => Some((text(id)?, int(count)? as u32)),
                _ => None,
            })
            .collect();
        Ok(claimed
            .into_iter()
            .map(|(id, message)| {
                let deliveries = counts.get(&id).copied().unwrap_or(2);
                Delivery { id, message, deliveries }
            })
            .collect())
    }

    async fn read_new(&self, request: &Receive<'_>, max: usize, block: bool) -> Result<Vec<Delivery>, QueueError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(request.group).arg(request.consumer).arg("COUNT").arg(max);
        if block && !request.block.is_zero() {
            cmd.arg("BLOCK").arg(request.block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(request.stream).arg(">");
        let pooled = self.blocking.lock().await.pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.manager(self.timeout + request.block).await?,
        };
        let reply = tokio::time::timeout(self.timeout + request.block, cmd.query_async::<Value>(&mut conn))
            .await
            .map_err(|_| QueueError::Unavailable("redis did not answer in time".into()))?
            .map_err(unavailable);
        if reply.is_ok() {
            let mut pool = self.blocking.lock().await;
            if pool.len() < 64 {
                pool.push(conn);
            }
        }
        let reply = reply?;
        // [[stream, [entry, …]]] or nil when the block ran out.
        Ok(array(&reply)
            .iter()
            .flat_map(|stream| array(stream).get(1).map(array).unwrap_or(&[]).iter())
            .filter_map(entry)
            .map(|(id, message)| Delivery { id, message, deliveries: 1 })
            .collect())
    }

    async fn receive_once(&self, request: &Receive<'_>) -> Result<Vec<Delivery>, QueueError> {
        let mut out = self.claim(request).await?;
        if out.len() < request.max {
            let more = self.read_new(request, request.max - out.len(), out.is_empty()).await?;
            out.extend(more);
        }
        Ok(out)
    }

    async fn group_info(&self, stream: &str, group: &str) -> Result<Option<Vec<(String, Value)>>, QueueError> {
        let groups = match self.query(redis::cmd("XINFO").arg("GROUPS").arg(stream)).await {
            Ok(groups) => groups,
            // No such stream yet.
            Err(QueueError::Refused(message)) if message.contains("no such key") => return Ok(None),
            Err(err) => return Err(err),
        };
        Ok(array(&groups)
            .iter()
            .map(|g| pairs(g).map(|(k, v)| (k, v.clone())).collect::<Vec<_>>())
            .find(|fields| fields.iter().any(|(k, v)| k == "name" && text(v).as_deref() == Some(group))))
    }
}

impl Broker for RedisStreams {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn publish<'a>(&'a self, stream: &'a str, messages: &'a [Message]) -> BoxFuture<'a, Result<Published, QueueError>> {
        Box::pin(async move {
            let epoch = self.epoch(stream).await?;
            let mut pipe = redis::pipe();
            for message in messages {
                let published_at = message.published_at_ms.to_string();
                let values = [
                    &message.key,
                    &message.kind,
                    &message.payload,
                    &message.event_id,
                    &message.traceparent,
                    &published_at,
                ];
                let cmd = pipe.cmd("XADD").arg(stream).arg("MAXLEN").arg("~").arg(self.max_length).arg("*");
                for (name, value) in FIELDS.iter().zip(values) {
                    cmd.arg(*name).arg(value.as_str());
                }
            }
            let mut conn = self.shared().await?;
            let ids: Vec<Value> = tokio::time::timeout(self.timeout, pipe.query_async(&mut conn))
                .await
                .map_err(|_| QueueError::Unavailable("redis did not answer in time".into()))?
                .map_err(unavailable)?;
            let ids = ids
                .iter()
                .map(|id| text(id).ok_or_else(|| QueueError::Protocol("XADD gave no id".into())))
                .collect::<Result<_, _>>()?;
            Ok(Published { ids, epoch })
        })
    }

    fn receive<'a>(&'a self, request: Receive<'a>) -> BoxFuture<'a, Result<Vec<Delivery>, QueueError>> {
        Box::pin(async move {
            match self.receive_once(&request).await {
                Err(err) if is_nogroup(&err) => {
                    self.create_group(request.stream, request.group).await?;
                    self.receive_once(&request).await
                }
                other => other,
            }
        })
    }

    fn ack<'a>(&'a self, stream: &'a str, group: &'a str, ids: &'a [String]) -> BoxFuture<'a, Result<u64, QueueError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(0);
            }
            let reply = self.query(redis::cmd("XACK").arg(stream).arg(group).arg(ids)).await?;
            int(&reply).map(|n| n.max(0) as u64).ok_or_else(|| QueueError::Protocol("XACK gave no count".into()))
        })
    }

    fn dead_letter<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let m = &delivery.message;
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("XADD")
                .arg(format!("{stream}:dead"))
                .arg("MAXLEN")
                .arg("~")
                .arg(self.max_length)
                .arg("*")
                .arg("key")
                .arg(&m.key)
                .arg("kind")
                .arg(&m.kind)
                .arg("payload")
                .arg(&m.payload)
                .arg("event_id")
                .arg(&m.event_id)
                .arg("entry")
                .arg(&delivery.id)
                .arg("group")
                .arg(group)
                .arg("reason")
                .arg(reason)
                .ignore()
                .cmd("XACK")
                .arg(stream)
                .arg(group)
                .arg(&delivery.id)
                .ignore();
            let mut conn = self.shared().await?;
            tokio::time::timeout(self.timeout, pipe.query_async::<()>(&mut conn))
                .await
                .map_err(|_| QueueError::Unavailable("redis did not answer in time".into()))?
                .map_err(unavailable)
        })
    }

    fn stats<'a>(&'a self, stream: &'a str, group: &'a str) -> BoxFuture<'a, Result<Stats, QueueError>> {
        Box::pin(async move {
            let epoch = self.epoch(stream).await?;
            let length = int(&self.query(redis::cmd("XLEN").arg(stream)).await?).unwrap_or(0).max(0) as u64;
            let dead = int(&self.query(redis::cmd("XLEN").arg(format!("{stream}:dead"))).await?).unwrap_or(0);
            let mut stats = Stats { epoch, length, dead_letters: dead.max(0) as u64, ..Default::default() };
            let Some(info) = self.group_info(stream, group).await? else {
                stats.lag = length;
                return Ok(stats);
            };
            let field = |name: &str| info.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            stats.pending = field("pending").as_ref().and_then(int).unwrap_or(0).max(0) as u64;
            stats.consumers = field("consumers").as_ref().and_then(int).unwrap_or(0).max(0) as u32;
            // Redis 7 counts the lag; nil when it cannot tell (after deletions).
            stats.lag = field("lag").as_ref().and_then(int).unwrap_or(0).max(0) as u64;
            if stats.lag > 0 {
                let last = field("last-delivered-id").as_ref().and_then(text).unwrap_or_else(|| "0-0".into());
                let next = self
                    .query(redis::cmd("XRANGE").arg(stream).arg(format!("({last}")).arg("+").arg("COUNT").arg(1))
                    .await?;
                if let Some(ms) = array(&next).first().and_then(entry).and_then(|(id, _)| crate::id_millis(&id)) {
                    stats.lag_ms = (kit_core::time::now_millis() - ms).max(0);
                }
            }
            Ok(stats)
        })
    }
}
