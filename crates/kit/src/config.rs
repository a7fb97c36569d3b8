//! Layered configuration: built-in defaults < TOML file < `SHOPFAST_*` env < flags.
//!
//! One file serves the whole stack; each service reads its own table
//! (`[users]`, `[products]`, …). Env vars use `__` for nesting:
//! `SHOPFAST_PRODUCTS__RESERVATION_TTL_SECS=60`.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("{var}: cannot read the secret file {path}: {source}")]
    SecretFile { var: String, path: PathBuf, source: std::io::Error },
}

/// Settings read from files named by `SHOPFAST_<SECTION>__<KEY>__FILE`
/// (Docker's `_FILE` convention: compose and Kubernetes secrets are files,
/// and a value in the environment shows to anything that can list it). The
/// file's content, without a trailing newline, is `<section>.<key>`.
fn settings_from_files() -> Result<Vec<(String, String)>, ConfigError> {
    let mut settings = Vec::new();
    for (var, path) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, PathBuf::from(v)))) {
        let Some(key) = var.strip_prefix("SHOPFAST_").and_then(|k| k.strip_suffix("__FILE")) else { continue };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::SecretFile {
            var: var.clone(),
            path: path.clone(),
            source,
        })?;
        let dotted = key.to_ascii_lowercase().replace("__", ".");
        settings.push((dotted, text.trim_end_matches(['\n', '\r']).to_string()));
    }
    Ok(settings)
}

/// A secret from config (a key, a token secret): read with [`Secret::expose`],
/// never shown by `Debug`, so a config printed or logged whole carries none.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Settings every service process has.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceCommon {
    /// gRPC listen address; port 0 picks a free port.
    pub grpc_addr: SocketAddr,
    /// Admin HTTP (`/health/live`, `/health/ready`, `/metrics`); port 0 picks a free port.
    pub admin_addr: SocketAddr,
    /// `sqlite://…` or `postgres://…`. Unset: a SQLite file `<data_dir>/<service>.db`.
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace_ms: u64,
    /// The registry to register with once ready (e.g. `http://127.0.0.1:8080`).
    pub registry_url: Option<String>,
    /// Host to advertise in the registry; default: the bound address
    /// (127.0.0.1 when bound to 0.0.0.0).
    pub advertise_host: Option<String>,
    /// The version registered (traffic policies route by it); unset: the
    /// build's own (`kit_core::build::version`).
    #[serde(default)]
    pub version: Option<String>,
    /// The deployment track registered (`blue`, `green`, `canary`); unset: `stable`.
    #[serde(default)]
    pub track: Option<String>,
    /// Labels registered with the instance: zone, replica, …
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Adaptive load shedding (on by default).
    #[serde(default)]
    pub shedding: kit_resilience::shed::ShedConfig,
    /// Fault injection (off unless enabled).
    #[serde(default)]
    pub faults: kit_resilience::faults::FaultConfig,
    /// Its identity and the CA it trusts (mutual TLS), or plain text on purpose.
    #[serde(default)]
    pub tls: kit_tls::TlsConfig,
}

impl ServiceCommon {
    pub fn with_ports(grpc_port: u16, admin_port: u16) -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], grpc_port)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            database_url: None,
            data_dir: PathBuf::from("data"),
            shutdown_grace_ms: 10_000,
            registry_url: None,
            advertise_host: None,
            version: None,
            track: None,
            metadata: Default::default(),
            shedding: Default::default(),
            faults: Default::default(),
            tls: Default::default(),
        }
    }

    /// The version this instance registers and reports, checked.
    pub fn version(&self) -> Result<String, String> {
        registry_wire::traffic::configured_version(self.version.as_deref())
    }

    /// The track this instance registers, checked.
    pub fn track(&self) -> Result<String, String> {
        registry_wire::traffic::configured_track(self.track.as_deref())
    }

    /// The database URL in force: the configured one, or the service's SQLite file.
    pub fn database_url_for(&self, service: &str) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => crate::db::sqlite_file_url(&self.data_dir.join(format!("{service}.db"))),
        }
    }
}

/// Loads `T` for `section`: defaults from `T::default()`, then the file's
/// `[section]` table, then `SHOPFAST_<SECTION>__*` env vars, then `overrides`
/// (flags; `None` fields must be skipped when serialising).
pub fn load<T, O>(section: &str, file: Option<&Path>, overrides: &O) -> Result<T, ConfigError>
where
    T: Default + Serialize + for<'de> Deserialize<'de>,
    O: Serialize,
{
    let mut sources = Figment::new();
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::MissingFile(path.to_path_buf()));
        }
        sources = sources.merge(Toml::file(path));
    }
    // SHOPFAST_PRODUCTS__RESERVATION_TTL_SECS -> products.reservation_ttl_secs
    let from_env = Env::prefixed("SHOPFAST_").filter(|key| !key.as_str().to_ascii_uppercase().ends_with("__FILE"));
    sources = sources.merge(from_env.split("__"));
    for (key, value) in settings_from_files()? {
        sources = sources.merge(Serialized::default(&key, value));
    }
    Figment::from(Serialized::defaults(T::default()))
        .merge(sources.focus(section))
        .merge(Serialized::defaults(overrides))
        .extract()
        .map_err(|e| ConfigError::Invalid(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    struct Sample {
        port: u16,
        name: String,
        ttl_secs: u64,
    }

    #[derive(Serialize)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shopfast.toml");
        std::fs::write(&file, "[sample]\nport = 7\nname = \"file\"\nttl_secs = 5\n[other]\nport = 9\n").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("SHOPFAST_SAMPLE__TTL_SECS", "60");
            let got: Sample = load("sample", Some(&file), &Flags { name: Some("flag".into()) }).unwrap();
            assert_eq!(got, Sample { port: 7, name: "flag".into(), ttl_secs: 60 });
            let defaults: Sample = load("sample", None, &Flags { name: None }).unwrap();
            assert_eq!(defaults.ttl_secs, 60, "env applies without a file");
            assert_eq!(defaults.port, 0);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature
    fn secrets_come_from_files_named_in_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("name");
        std::fs::write(&secret, "from a file\n").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("SHOPFAST_SAMPLE__NAME__FILE", secret.display().to_string());
            let got: Sample = load("sample", None, &Flags { name: None }).unwrap();
            assert_eq!(got.name, "from a file");
            jail.set_env("SHOPFAST_SAMPLE__NAME__FILE", "/nonexistent/secret");
            let err = load::<Sample, _>("sample", None, &Flags { name: None }).unwrap_err();
            assert!(err.to_string().contains("SHOPFAST_SAMPLE__NAME__FILE"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_and_bad_types_are_errors() {
        let none = Flags { name: None };
        let err = load::<Sample, _>("sample", Some(Path::new("/nonexistent/x.toml")), &none);
        assert!(matches!(err, Err(ConfigError::MissingFile(_))));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[sample]\nport = \"not a number\"\n").unwrap();
        let err = load::<Sample, _>("sample", Some(&file), &none).unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }
}
