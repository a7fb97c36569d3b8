//! The embedded broker's state: Redis Streams' structure in memory — a
//! bounded stream of entries, consumer groups with a last-delivered id and a
//! pending-entries list, claims of entries idle on a consumer, a bounded
//! dead-letter stream. Pure: the clock is passed in, the caller holds the lock.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::{Broker, Delivery, Message, Published, QueueError, Receive, Stats};

/// Streams, consumer groups and consumers kept at most (names come from callers).
const MAX_STREAMS: usize = 64;
const MAX_GROUPS: usize = 64;
const MAX_CONSUMERS: usize = 1_024;
const MAX_NAME: usize = 128;
pub const MAX_BATCH: usize = 1_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Full(String),
}

pub struct Streams {
    streams: HashMap<String, Stream>,
    max_length: usize,
    epoch: String,
}

#[derive(Default)]
struct Stream {
    entries: BTreeMap<u64, Entry>,
    next_seq: u64,
    groups: HashMap<String, Group>,
    dead: VecDeque<(Entry, String)>,
}

#[derive(Clone)]
struct Entry {
    ms: i64,
    message: Message,
}

#[derive(Default)]
struct Group {
    last_delivered: u64,
    pending: BTreeMap<u64, Pending>,
    /// Consumer → when it last asked.
    consumers: HashMap<String, i64>,
}

struct Pending {
    consumer: String,
    delivered_ms: i64,
    deliveries: u32,
}

fn check_name(what: &str, name: &str) -> Result<(), MemoryError> {
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(MemoryError::Invalid(format!("{what} must be 1 to {MAX_NAME} characters without spaces")));
    }
    Ok(())
}

fn entry_id(entry: &Entry, seq: u64) -> String {
    format!("{}-{seq}", entry.ms)
}

fn parse_seq(id: &str) -> Option<u64> {
    id.split_once('-')?.1.parse().ok()
}

impl Streams {
    pub fn new(max_length: usize) -> Self {
        Self {
            streams: HashMap::new(),
            max_length: max_length.max(1),
            epoch: uuid::Uuid::now_v7().simple().to_string(),
        }
    }

    /// Fresh on every start: what a previous process held is gone.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn stream_mut(&mut self, name: &str) -> Result<&mut Stream, MemoryError> {
        check_name("stream", name)?;
        if !self.streams.contains_key(name) && self.streams.len() >= MAX_STREAMS {
            return Err(MemoryError::Full(format!("at most {MAX_STREAMS} streams")));
        }
        Ok(self.streams.entry(name.to_string()).or_default())
    }

    pub fn publish(&mut self, stream: &str, messages: &[Message], now_ms: i64) -> Result<Vec<String>, MemoryError> {
        if messages.len() > MAX_BATCH {
            return Err(MemoryError::Invalid(format!("at most {MAX_BATCH} messages at once")));
        }
        let max_length = self.max_length;
        let stream = self.stream_mut(stream)?;
        let mut ids = Vec::with_capacity(messages.len());
        for message in messages {
            stream.next_seq += 1;
            let entry = Entry { ms: now_ms, message: message.clone() };
            ids.push(entry_id(&entry, stream.next_seq));
            stream.entries.insert(stream.next_seq, entry);
        }
        // Trimmed like XADD MAXLEN: the oldest go, delivered or not (the
        // producers' outboxes still hold what was never handled).
        while stream.entries.len() > max_length {
            if let Some((seq, _)) = stream.entries.pop_first() {
                for group in stream.groups.values_mut() {
                    group.pending.remove(&seq);
                }
            }
        }
        Ok(ids)
    }

    /// Entries idle on a consumer for `claim_idle_ms` first (claimed by this
    /// one, their delivery count raised), then new ones, up to `max`.
    pub fn receive(
        &mut self,
        stream_name: &str,
        group_name: &str,
        consumer: &str,
        max: usize,
        claim_idle_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<Delivery>, MemoryError> {
        check_name("group", group_name)?;
        check_name("consumer", consumer)?;
        if max == 0 || max > MAX_BATCH {
            return Err(MemoryError::Invalid(format!("max must be 1 to {MAX_BATCH}")));
        }
        let stream = self.stream_mut(stream_name)?;
        if !stream.groups.contains_key(group_name) && stream.groups.len() >= MAX_GROUPS {
            return Err(MemoryError::Full(format!("at most {MAX_GROUPS} groups")));
        }
        // Like XGROUP CREATE … 0: a new group reads the stream from its start.
        let group = stream.groups.entry(group_name.to_string()).or_default();
        if !group.consumers.contains_key(consumer) && group.consumers.len() >= MAX_CONSUMERS {
            let oldest = group.consumers.iter().min_by_key(|(_, seen)| **seen).map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                group.consumers.remove(&oldest);
            }
        }
        group.consumers.insert(consumer.to_string(), now_ms);
        let mut out = Vec::new();
        for (seq, pending) in group.pending.iter_mut() {
            if out.len() >= max {
                break;
            }
            if now_ms - pending.delivered_ms < claim_idle_ms {
                continue;
            }
            let Some(entry) = stream.entries.get(seq) else { continue };
            pending.consumer = consumer.to_string();
            pending.delivered_ms = now_ms;
            pending.deliveries += 1;
            out.push(Delivery {
                id: entry_id(entry, *seq),
                message: entry.message.clone(),
                deliveries: pending.deliveries,
            });
        }
        let fresh: Vec<u64> =
            stream.entries.range(group.last_delivered + 1..).take(max - out.len()).map(|(seq, _)| *seq).collect();
        for seq in fresh {
            let Some(entry) = stream.entries.get(&seq) else { continue };
            group.last_delivered = seq;
            group.pending.insert(seq, Pending { consumer: consumer.to_string(), delivered_ms: now_ms, deliveries: 1 });
            out.push(Delivery { id: entry_id(entry, seq), message: entry.message.clone(), deliveries: 1 });
        }
        Ok(out)
    }

    pub fn ack(&mut self, stream: &str, group: &str, ids: &[String]) -> Result<u64, MemoryError> {
        let Some(stream) = self.streams.get_mut(stream) else { return Ok(0) };
        let Some(group) = stream.groups.get_mut(group) else { return Ok(0) };
        // The whole id must match an entry's: `0-1` is not `1700000000000-1`.
        let entries = &stream.entries;
        let acked = ids
            .iter()
            .filter_map(|id| parse_seq(id).filter(|seq| entries.get(seq).is_some_and(|e| entry_id(e, *seq) == *id)))
            .filter(|seq| group.pending.remove(seq).is_some())
            .count();
        Ok(acked as u64)
    }

    pub fn dead_letter(
        &mut self,
        stream_name: &str,
        group: &str,
        delivery: &Delivery,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), MemoryError> {
        let max_length = self.max_length;
        let stream = self.stream_mut(stream_name)?;
        stream
            .dead
            .push_back((Entry { ms: now_ms, message: delivery.message.clone() }, reason.chars().take(512).collect()));
        while stream.dead.len() > max_length {
            stream.dead.pop_front();
        }
        self.ack(stream_name, group, std::slice::from_ref(&delivery.id))?;
        Ok(())
    }

    pub fn stats(&self, stream: &str, group: &str, now_ms: i64) -> Stats {
        let mut stats = Stats { epoch: self.epoch.clone(), ..Default::default() };
        let Some(stream) = self.streams.get(stream) else { return stats };
        stats.length = stream.entries.len() as u64;
        stats.dead_letters = stream.dead.len() as u64;
        let last_delivered = match stream.groups.get(group) {
            Some(group) => {
                stats.pending = group.pending.len() as u64;
                stats.consumers = group.consumers.len() as u32;
                group.last_delivered
            }
            None => 0,
        };
        let mut undelivered = stream.entries.range(last_delivered + 1..);
        stats.lag = undelivered.clone().count() as u64;
        stats.lag_ms = undelivered.next().map_or(0, |(_, e)| (now_ms - e.ms).max(0));
        stats
    }

    /// The dead letters of a stream, oldest first, with their reasons.
    pub fn dead_letters(&self, stream: &str) -> Vec<(Message, String)> {
        self.streams
            .get(stream)
            .map(|s| s.dead.iter().map(|(e, reason)| (e.message.clone(), reason.clone())).collect())
            .unwrap_or_default()
    }
}

/// The longest a receive may wait for entries.
const MAX_BLOCK: Duration = Duration::from_secs(10);
/// How often a waiting receive looks again for entries to claim (a claim
/// waits `claim_idle` anyway; this adds at most a second to it).
const CLAIM_RECHECK: Duration = Duration::from_secs(1);

/// The embedded broker: `Streams` behind a lock, receives that wait for a
/// publish. The `shopfast queue` process serves one over gRPC.
pub struct Embedded {
    streams: Mutex<Streams>,
    published: tokio::sync::Notify,
}

impl Embedded {
    pub fn new(max_length: usize) -> Self {
        Self { streams: Mutex::new(Streams::new(max_length)), published: tokio::sync::Notify::new() }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Streams) -> Result<T, MemoryError>) -> Result<T, QueueError> {
        let mut streams =
            self.streams.lock().map_err(|_| QueueError::Protocol("the queue's state is poisoned".into()))?;
        f(&mut streams).map_err(|err| match err {
            MemoryError::Invalid(message) => QueueError::Refused(message),
            MemoryError::Full(message) => QueueError::Unavailable(message),
        })
    }

    /// The dead letters of a stream, oldest first, with their reasons.
    pub fn dead_letters(&self, stream: &str) -> Vec<(Message, String)> {
        self.with(|s| Ok(s.dead_letters(stream))).unwrap_or_default()
    }
}

impl Broker for Embedded {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn publish<'a>(&'a self, stream: &'a str, messages: &'a [Message]) -> BoxFuture<'a, Result<Published, QueueError>> {
        Box::pin(async move {
            let now = kit_core::time::now_millis();
            let published =
                self.with(|s| Ok(Published { ids: s.publish(stream, messages, now)?, epoch: s.epoch().to_string() }))?;
            self.published.notify_waiters();
            Ok(published)
        })
    }

    fn receive<'a>(&'a self, r: Receive<'a>) -> BoxFuture<'a, Result<Vec<Delivery>, QueueError>> {
        Box::pin(async move {
            let until = tokio::time::Instant::now() + r.block.min(MAX_BLOCK);
            let claim_idle = r.claim_idle.as_millis().min(i64::MAX as u128) as i64;
            loop {
                // Registered before looking, so a publish in between is not missed.
                let published = self.published.notified();
                tokio::pin!(published);
                published.as_mut().enable();
                let now = kit_core::time::now_millis();
                let got = self.with(|s| s.receive(r.stream, r.group, r.consumer, r.max, claim_idle, now))?;
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                if !got.is_empty() || left.is_zero() {
                    return Ok(got);
                }
                let _ = tokio::time::timeout(left.min(CLAIM_RECHECK), published).await;
            }
        })
    }

    fn ack<'a>(&'a self, stream: &'a str, group: &'a str, ids: &'a [String]) -> BoxFuture<'a, Result<u64, QueueError>> {
        Box::pin(async move { self.with(|s| s.ack(stream, group, ids)) })
    }

    fn dead_letter<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let now = kit_core::time::now_millis();
            self.with(|s| s.dead_letter(stream, group, delivery, reason, now))
        })
    }

    fn stats<'a>(&'a self, stream: &'a str, group: &'a str) -> BoxFuture<'a, Result<Stats, QueueError>> {
        Box::pin(async move {
            let now = kit_core::time::now_millis();
            self.with(|s| Ok(s.stats(stream, group, now)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(key: &str) -> Message {
        Message { key: key.into(), kind: "order.paid".into(), ..Default::default() }
    }

    #[test]
    fn a_group_shares_entries_between_consumers_once_each() {
        let mut s = Streams::new(100);
        s.publish("o", &[msg("a"), msg("b"), msg("c")], 10).unwrap();
        let first = s.receive("o", "g", "c1", 2, 1_000, 10).unwrap();
        let second = s.receive("o", "g", "c2", 10, 1_000, 10).unwrap();
        let keys: Vec<_> = first.iter().chain(&second).map(|d| d.message.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert!(s.receive("o", "g", "c3", 10, 1_000, 10).unwrap().is_empty());
        // Another group reads the whole stream on its own.
        assert_eq!(s.receive("o", "other", "x", 10, 1_000, 10).unwrap().len(), 3);
        let stats = s.stats("o", "g", 10);
        assert_eq!((stats.length, stats.pending, stats.lag, stats.consumers), (3, 3, 0, 3));
    }

    #[test]
    fn an_unacknowledged_entry_goes_to_another_consumer_after_the_idle_time() {
        let mut s = Streams::new(100);
        s.publish("o", &[msg("a")], 0).unwrap();
        let held = s.receive("o", "g", "dead", 10, 500, 0).unwrap();
        assert_eq!(held[0].deliveries, 1);
        assert!(s.receive("o", "g", "alive", 10, 500, 499).unwrap().is_empty(), "not idle long enough yet");
        let claimed = s.receive("o", "g", "alive", 10, 500, 500).unwrap();
        assert_eq!((claimed[0].id.as_str(), claimed[0].deliveries), (held[0].id.as_str(), 2));
        assert_eq!(s.ack("o", "g", &[claimed[0].id.clone()]).unwrap(), 1);
        assert_eq!(s.ack("o", "g", &[claimed[0].id.clone()]).unwrap(), 0, "acknowledged once");
        assert!(s.receive("o", "g", "alive", 10, 0, 10_000).unwrap().is_empty());
        assert_eq!(s.stats("o", "g", 0).pending, 0);
    }

    #[test]
    fn lag_counts_and_ages_what_the_group_has_not_seen() {
        let mut s = Streams::new(100);
        s.publish("o", &[msg("a")], 1_000).unwrap();
        s.publish("o", &[msg("b")], 3_000).unwrap();
        assert_eq!((s.stats("o", "g", 4_000).lag, s.stats("o", "g", 4_000).lag_ms), (2, 3_000));
        s.receive("o", "g", "c", 1, 1_000, 4_000).unwrap();
        let stats = s.stats("o", "g", 4_000);
        assert_eq!((stats.lag, stats.lag_ms, stats.pending), (1, 1_000, 1));
    }

    #[test]
    fn the_stream_is_trimmed_to_its_bound_and_dead_letters_too() {
        let mut s = Streams::new(3);
        for key in ["a", "b", "c", "d", "e"] {
            s.publish("o", &[msg(key)], 0).unwrap();
        }
        let got = s.receive("o", "g", "c", 10, 1_000, 0).unwrap();
        assert_eq!(got.iter().map(|d| d.message.key.as_str()).collect::<Vec<_>>(), ["c", "d", "e"]);
        for d in &got {
            s.dead_letter("o", "g", d, "poison", 0).unwrap();
        }
        s.dead_letter("o", "g", &got[0], "again", 0).unwrap();
        assert_eq!(s.dead_letters("o").len(), 3);
        let stats = s.stats("o", "g", 0);
        assert_eq!((stats.pending, stats.dead_letters), (0, 3));
    }

    #[test]
    fn garbage_names_and_sizes_are_refused() {
        let mut s = Streams::new(10);
        assert!(s.publish("", &[msg("a")], 0).is_err());
        assert!(s.publish("a b", &[msg("a")], 0).is_err());
        assert!(s.receive("o", "g", "c", 0, 0, 0).is_err());
        assert!(s.receive("o", "", "c", 1, 0, 0).is_err());
        assert!(s.receive("o", "g", &"x".repeat(200), 1, 0, 0).is_err());
        for n in 0..MAX_STREAMS {
            s.publish(&format!("s{n}"), &[], 0).unwrap();
        }
        assert!(matches!(s.publish("one-more", &[], 0), Err(MemoryError::Full(_))));
        assert_eq!(s.ack("nope", "nope", &["garbage".into()]).unwrap(), 0);
    }
}
