//! The etcd backend, over etcd's v3 JSON gateway (`/v3/kv/*`, `/v3/lease/*`,
//! `/v3/watch`): the same API as etcd's gRPC, without compiling etcd's protos
//! (the `etcd-client` crate needs protoc at build time; this keeps the whole
//! workspace protoc-free).
//!
//! Layout under a key prefix: `instances/<id>` → instance JSON, attached to a
//! lease so an instance whose registry nodes all died still expires;
//! `policies/<service>` → traffic policy JSON (its index is the key's
//! `mod_revision`, and a compare-and-set compares that);
//! `audit/<revision, 20 digits>` → audit entry (numbered by the etcd revision
//! of the write, so entries from several registry nodes interleave in order).
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use registry_wire::traffic::TrafficPolicy;

use crate::model::{AuditEntry, Instance};
use crate::store::{AuditEvent, Store, StoreError};

pub struct EtcdStore {
    http: reqwest::Client,
    endpoints: Vec<String>,
    prefix: String,
    /// instance id → (lease id, lease TTL in seconds) this node granted.
    leases: Mutex<HashMap<String, (String, i64)>>,
}

fn b64(text: &str) -> String {
    B64.encode(text)
}

fn unb64(value: &Value) -> Result<Vec<u8>, StoreError> {
    let text = value.as_str().unwrap_or_default();
    B64.decode(text).map_err(|e| StoreError::Corrupt(format!("bad base64 from etcd: {e}")))
}

/// etcd's JSON encodes int64 as strings.
fn as_u64(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the key range that has `prefix` as a prefix.
fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    "\0".to_string()
}

impl EtcdStore {
    /// `endpoints` like `http://127.0.0.1:2379`; every key lives under `prefix`.
    pub fn new(endpoints: Vec<String>, prefix: &str) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Unavailable("no etcd endpoints configured".into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self {
            http,
            endpoints: endpoints.into_iter().map(|e| e.trim_end_matches('/').to_string()).collect(),
            prefix: format!("{}/", prefix.trim_end_matches('/')),
            leases: Mutex::new(HashMap::new()),
        })
    }

    fn instance_key(&self, id: &str) -> String {
        format!("{}instances/{id}", self.prefix)
    }

    fn policy_key(&self, service: &str) -> String {
        format!("{}policies/{service}", self.prefix)
    }

    /// The keys whose changes wake blocking queries: from `instances/` to the
    /// end of `policies/` (nothing else is stored between them; the audit
    /// log sorts before).
    fn watched_range(&self) -> (String, String) {
        (format!("{}instances/", self.prefix), prefix_end(&format!("{}policies/", self.prefix)))
    }

    fn decode_policy(kv: &Value) -> Result<TrafficPolicy, StoreError> {
        let mut policy: TrafficPolicy = serde_json::from_slice(&unb64(&kv["value"])?)
            .map_err(|e| StoreError::Corrupt(format!("bad policy JSON: {e}")))?;
        policy.index = as_u64(&kv["mod_revision"]);
        Ok(policy)
    }

    /// POSTs to the first endpoint that answers.
    async fn call(&self, path: &str, body: Value, timeout: Duration) -> Result<Value, StoreError> {
        let mut last_error = String::new();
        for endpoint in &self.endpoints {
            let sent = self.http.post(format!("{endpoint}{path}")).timeout(timeout).json(&body).send().await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    return response.json().await.map_err(|e| StoreError::Corrupt(e.to_string()));
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    return Err(StoreError::Unavailable(format!("etcd {path}: {status} {text}")));
                }
                Err(err) => last_error = format!("{endpoint}: {err}"),
            }
        }
        Err(StoreError::Unavailable(last_error))
    }

    async fn kv(&self, path: &str, body: Value) -> Result<Value, StoreError> {
        self.call(path, body, Duration::from_secs(5)).await
    }

    /// A lease of `ttl_secs` for `id`: the one this node holds, kept alive, or a new one.
    async fn lease_for(&self, id: &str, ttl_secs: i64) -> Result<String, StoreError> {
        let held = self.leases.lock().ok().and_then(|l| l.get(id).cloned());
        if let Some((lease, ttl)) = held
            && ttl == ttl_secs
        {
            let kept = self.kv("/v3/lease/keepalive", json!({ "ID": lease })).await?;
            if as_u64(&kept["result"]["TTL"]) > 0 {
                return Ok(lease);
            }
        }
        let granted = self.kv("/v3/lease/grant", json!({ "TTL": ttl_secs })).await?;
        let lease = granted["ID"].as_str().map(str::to_string).unwrap_or_else(|| granted["ID"].to_string());
        if let Ok(mut leases) = self.leases.lock() {
            leases.insert(id.to_string(), (lease.clone(), ttl_secs));
        }
        Ok(lease)
    }

    fn decode_instance(value: &Value) -> Result<Instance, StoreError> {
        serde_json::from_slice(&unb64(value)?).map_err(|e| StoreError::Corrupt(format!("bad instance JSON: {e}")))
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn put(&self, instance: &Instance, ttl_hint: Duration) -> Result<(), StoreError> {
        let ttl_secs = ttl_hint.as_secs().max(1) as i64;
        let lease = self.lease_for(&instance.id, ttl_secs).await?;
        let value = serde_json::to_string(instance).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.kv(
            "/v3/kv/put",
            json!({ "key": b64(&self.instance_key(&instance.id)), "value": b64(&value), "lease": lease }),
        )
        .await?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Instance>, StoreError> {
        let found = self.kv("/v3/kv/range", json!({ "key": b64(&self.instance_key(id)) })).await?;
        match found["kvs"].as_array().and_then(|kvs| kvs.first()) {
            Some(kv) => Ok(Some(Self::decode_instance(&kv["value"])?)),
            None => Ok(None),
        }
    }

    async fn remove(&self, id: &str) -> Result<Option<Instance>, StoreError> {
        let deleted =
            self.kv("/v3/kv/deleterange", json!({ "key": b64(&self.instance_key(id)), "prev_kv": true })).await?;
        let held = self.leases.lock().ok().and_then(|mut l| l.remove(id));
        if let Some((lease, _)) = held {
            // Best effort: an orphaned lease expires by itself.
            let _ = self.kv("/v3/lease/revoke", json!({ "ID": lease })).await;
        }
        match deleted["prev_kvs"].as_array().and_then(|kvs| kvs.first()) {
            Some(kv) => Ok(Some(Self::decode_instance(&kv["value"])?)),
            None => Ok(None),
        }
    }

    async fn list(&self) -> Result<Vec<Instance>, StoreError> {
        let prefix = format!("{}instances/", self.prefix);
        let found =
            self.kv("/v3/kv/range", json!({ "key": b64(&prefix), "range_end": b64(&prefix_end(&prefix)) })).await?;
        found["kvs"]
            .as_array()
            .map(|kvs| kvs.iter().map(|kv| Self::decode_instance(&kv["value"])).collect())
            .unwrap_or(Ok(Vec::new()))
    }

    async fn record(&self, event: AuditEvent) -> Result<(), StoreError> {
        // Reserve a number first: the revision of a marker write. Two writes,
        // but entry numbers then follow etcd's global order across nodes.
        let marker = format!("{}audit-seq", self.prefix);
        let put = self.kv("/v3/kv/put", json!({ "key": b64(&marker), "value": b64("") })).await?;
        let seq = as_u64(&put["header"]["revision"]);
        let entry = AuditEntry {
            seq,
            at_ms: event.at_ms,
            event: event.event.to_string(),
            instance_id: event.instance_id,
            name: event.name,
            detail: event.detail,
        };
        let value = serde_json::to_string(&entry).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let key = format!("{}audit/{seq:020}", self.prefix);
        self.kv("/v3/kv/put", json!({ "key": b64(&key), "value": b64(&value) })).await?;
        Ok(())
    }

    async fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let from = format!("{}audit/{:020}", self.prefix, after.saturating_add(1));
        let end = prefix_end(&format!("{}audit/", self.prefix));
        let found =
            self.kv("/v3/kv/range", json!({ "key": b64(&from), "range_end": b64(&end), "limit": limit })).await?;
        let Some(kvs) = found["kvs"].as_array() else { return Ok(Vec::new()) };
        kvs.iter()
            .map(|kv| {
                serde_json::from_slice(&unb64(&kv["value"])?)
                    .map_err(|e| StoreError::Corrupt(format!("bad audit JSON: {e}")))
            })
            .collect()
    }

    async fn put_policy(&self, policy: &TrafficPolicy, if_index: Option<u64>) -> Result<TrafficPolicy, StoreError> {
        let key = b64(&self.policy_key(&policy.service));
        let value = serde_json::to_string(policy).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let put = json!({ "request_put": { "key": key, "value": b64(&value) } });
        let revision = match if_index {
            None => as_u64(&self.kv("/v3/kv/put", put["request_put"].clone()).await?["header"]["revision"]),
            Some(expected) => {
                // A missing key's mod_revision compares as 0.
                let compare =
                    json!([{ "key": key, "target": "MOD", "result": "EQUAL", "mod_revision": expected.to_string() }]);
                let done = self.kv("/v3/kv/txn", json!({ "compare": compare, "success": [put] })).await?;
                if done["succeeded"].as_bool() != Some(true) {
                    let current = self.get_policy(&policy.service).await?.map_or(0, |p| p.index);
                    return Err(StoreError::Conflict(format!(
                        "the policy of {} is at index {current}, not {expected}",
                        policy.service
                    )));
                }
                as_u64(&done["header"]["revision"])
            }
        };
        Ok(TrafficPolicy { index: revision, ..policy.clone() })
    }

    async fn get_policy(&self, service: &str) -> Result<Option<TrafficPolicy>, StoreError> {
        let found = self.kv("/v3/kv/range", json!({ "key": b64(&self.policy_key(service)) })).await?;
        found["kvs"].as_array().and_then(|kvs| kvs.first()).map(Self::decode_policy).transpose()
    }

    async fn remove_policy(&self, service: &str) -> Result<Option<TrafficPolicy>, StoreError> {
        let deleted =
            self.kv("/v3/kv/deleterange", json!({ "key": b64(&self.policy_key(service)), "prev_kv": true })).await?;
        deleted["prev_kvs"].as_array().and_then(|kvs| kvs.first()).map(Self::decode_policy).transpose()
    }

    async fn list_policies(&self) -> Result<Vec<TrafficPolicy>, StoreError> {
        let prefix = format!("{}policies/", self.prefix);
        let found =
            self.kv("/v3/kv/range", json!({ "key": b64(&prefix), "range_end": b64(&prefix_end(&prefix)) })).await?;
        found["kvs"].as_array().map(|kvs| kvs.iter().map(Self::decode_policy).collect()).unwrap_or(Ok(Vec::new()))
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let (start, end) = self.watched_range();
        let found =
            self.kv("/v3/kv/range", json!({ "key": b64(&start), "range_end": b64(&end), "count_only": true })).await?;
        Ok(as_u64(&found["header"]["revision"]))
    }

    async fn wait_for_change(&self, after: u64, timeout: Duration) -> Result<u64, StoreError> {
        let (start, end) = self.watched_range();
        let request = json!({ "create_request": {
            "key": b64(&start), "range_end": b64(&end), "start_revision": after + 1
        }});
        let waited = tokio::time::timeout(timeout, async {
            let mut last_error = String::new();
            for endpoint in &self.endpoints {
                let response = match self.http.post(format!("{endpoint}/v3/watch")).json(&request).send().await {
                    Ok(r) if r.status().is_success() => r,
                    Ok(r) => return Err(StoreError::Unavailable(format!("etcd watch: {}", r.status()))),
                    Err(e) => {
                        last_error = e.to_string();
                        continue;
                    }
                };
                return first_watch_event(response).await;
            }
            Err(StoreError::Unavailable(last_error))
        })
        .await;
        match waited {
            Ok(Ok(Some(revision))) => Ok(revision),
            // Timed out, or the watch was cancelled (e.g. compacted): report now.
            Ok(Ok(None)) | Err(_) => self.revision().await,
            Ok(Err(err)) => Err(err),
        }
    }
}

/// Reads the watch stream (newline-delimited JSON) until the first event;
/// returns its revision, or None if etcd cancelled the watch.
async fn first_watch_event(mut response: reqwest::Response) -> Result<Option<u64>, StoreError> {
    let mut buffer = Vec::new();
    loop {
        let chunk = response.chunk().await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let Some(chunk) = chunk else { return Ok(None) };
        buffer.extend_from_slice(&chunk);
        while let Some(newline) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=newline).collect();
            let Ok(message) = serde_json::from_slice::<Value>(&line) else { continue };
            let result = &message["result"];
            if result["canceled"].as_bool() == Some(true) {
                return Ok(None);
            }
            if result["events"].as_array().is_some_and(|e| !e.is_empty()) {
                return Ok(Some(as_u64(&result["header"]["revision"])));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_cover_exactly_the_prefix() {
        assert_eq!(prefix_end("a/"), "a0");
        assert_eq!(prefix_end("shopfast/instances/"), "shopfast/instances0");
    }
}
