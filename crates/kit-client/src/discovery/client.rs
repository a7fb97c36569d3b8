//! A thin HTTP client for the registry API.
use std::collections::BTreeMap;
use std::time::Duration;

use registry_wire::wire::{HeartbeatRequest, InstanceList, RegisterRequest, RegisterResponse};

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("registry unreachable at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("registry refused the request: {status} {body}")]
    Refused { status: u16, body: String },
    #[error("registry answered with bad JSON: {0}")]
    BadAnswer(reqwest::Error),
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    Alive,
    /// The registry does not know the instance (it restarted or expired it).
    Unknown,
}

#[derive(Clone, Debug)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
}

impl RegistryClient {
    /// A client of a registry in plain text.
    pub fn new(base_url: &str) -> Self {
        Self::with_tls(base_url, None)
    }

    /// With `tls`, our certificate goes with every call and the registry must
    /// prove its identity (`registry.shopfast.internal`), whatever the URL's host.
    pub fn with_tls(base_url: &str, tls: Option<std::sync::Arc<kit_tls::Tls>>) -> Self {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(90));
        let builder = match tls.as_ref().map(|tls| tls.client_config_for(kit_tls::REGISTRY)) {
            Some(Ok(config)) => builder.tls_backend_preconfigured(config),
            Some(Err(err)) => {
                tracing::error!(error = %err, "cannot set up TLS to the registry; calls will fail");
                builder
            }
            None => builder,
        };
        let http = builder.build().unwrap_or_else(|err| {
            tracing::error!(error = %err, "cannot build the registry client");
            reqwest::Client::new()
        });
        Self { base: base_url.trim_end_matches('/').to_string(), http }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, DiscoveryError> {
        // A call made inside a trace carries it (background heartbeats and
        // watches are in none, and send nothing).
        let mut headers = http::HeaderMap::new();
        kit_telemetry::otel::inject(&tracing::Span::current(), &mut headers);
        let response = request
            .headers(headers)
            .timeout(timeout)
            .send()
            .await
            .map_err(|source| DiscoveryError::Unreachable { url: self.base.clone(), source })?;
        Ok(response)
    }

    async fn refused(response: reqwest::Response) -> DiscoveryError {
        let status = response.status().as_u16();
        DiscoveryError::Refused { status, body: response.text().await.unwrap_or_default() }
    }

    pub async fn register(&self, request: &RegisterRequest) -> Result<RegisterResponse, DiscoveryError> {
        let response = self
            .send(self.http.post(format!("{}/v1/register", self.base)).json(request), Duration::from_secs(2))
            .await?;
        if !response.status().is_success() {
            return Err(Self::refused(response).await);
        }
        response.json().await.map_err(DiscoveryError::BadAnswer)
    }

    pub async fn heartbeat(&self, id: &str, beat: &HeartbeatRequest) -> Result<Beat, DiscoveryError> {
        let url = format!("{}/v1/heartbeat/{id}", self.base);
        let response = self.send(self.http.put(url).json(beat), Duration::from_secs(2)).await?;
        match response.status().as_u16() {
            200..=299 => Ok(Beat::Alive),
            404 => Ok(Beat::Unknown),
            _ => Err(Self::refused(response).await),
        }
    }

    pub async fn deregister(&self, id: &str, timeout: Duration) -> Result<(), DiscoveryError> {
        let response = self.send(self.http.delete(format!("{}/v1/instances/{id}", self.base)), timeout).await?;
        match response.status().as_u16() {
            200..=299 | 404 => Ok(()),
            _ => Err(Self::refused(response).await),
        }
    }

    /// Takes an instance out of routing (removed after the drain grace).
    pub async fn drain(&self, id: &str) -> Result<(), DiscoveryError> {
        let url = format!("{}/v1/instances/{id}/drain", self.base);
        let response = self.send(self.http.post(url), Duration::from_secs(5)).await?;
        match response.status().as_u16() {
            200..=299 | 404 => Ok(()),
            _ => Err(Self::refused(response).await),
        }
    }

    /// Routable instances of `name`. With `index`, a blocking query: answers
    /// when the registry changed after `index`, or after `wait`.
    pub async fn lookup(
        &self,
        name: &str,
        filter: &BTreeMap<String, String>,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<InstanceList, DiscoveryError> {
        let mut query: Vec<(String, String)> = filter.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(index) = index {
            query.push(("index".into(), index.to_string()));
            query.push(("wait".into(), format!("{}ms", wait.as_millis())));
        }
        let request = self.http.get(format!("{}/v1/services/{name}", self.base)).query(&query);
        let response = self.send(request, wait + Duration::from_secs(5)).await?;
        if !response.status().is_success() {
            return Err(Self::refused(response).await);
        }
        response.json().await.map_err(DiscoveryError::BadAnswer)
    }

    /// Every traffic policy.
    pub async fn policies(&self) -> Result<Vec<registry_wire::traffic::TrafficPolicy>, DiscoveryError> {
        #[derive(serde::Deserialize)]
        struct Policies {
            policies: Vec<registry_wire::traffic::TrafficPolicy>,
        }
        let response = self.send(self.http.get(format!("{}/v1/policies", self.base)), Duration::from_secs(5)).await?;
        if !response.status().is_success() {
            return Err(Self::refused(response).await);
        }
        Ok(response.json::<Policies>().await.map_err(DiscoveryError::BadAnswer)?.policies)
    }

    /// A service's traffic policy, if it has one.
    pub async fn policy(&self, service: &str) -> Result<Option<registry_wire::traffic::TrafficPolicy>, DiscoveryError> {
        let url = format!("{}/v1/policies/{service}", self.base);
        let response = self.send(self.http.get(url), Duration::from_secs(5)).await?;
        match response.status().as_u16() {
            404 => Ok(None),
            200..=299 => response.json().await.map(Some).map_err(DiscoveryError::BadAnswer),
            _ => Err(Self::refused(response).await),
        }
    }

    /// Sets a service's traffic policy (operator or deployer identities).
    pub async fn set_policy(
        &self,
        service: &str,
        change: &registry_wire::traffic::PolicyChange,
    ) -> Result<registry_wire::traffic::TrafficPolicy, DiscoveryError> {
        let url = format!("{}/v1/policies/{service}", self.base);
        let response = self.send(self.http.put(url).json(change), Duration::from_secs(5)).await?;
        if !response.status().is_success() {
            return Err(Self::refused(response).await);
        }
        response.json().await.map_err(DiscoveryError::BadAnswer)
    }

    /// Every instance the registry knows, routable or not.
    pub async fn all_instances(&self) -> Result<InstanceList, DiscoveryError> {
        let response = self.send(self.http.get(format!("{}/v1/instances", self.base)), Duration::from_secs(5)).await?;
        if !response.status().is_success() {
            return Err(Self::refused(response).await);
        }
        response.json().await.map_err(DiscoveryError::BadAnswer)
    }
}
