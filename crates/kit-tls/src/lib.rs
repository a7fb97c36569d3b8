//! Service identity and mutual TLS between every process.
//!
//! Each process holds a certificate whose URI SAN is its SPIFFE ID,
//! `spiffe://shopfast.internal/service/<name>`, and whose DNS SAN is
//! `<name>.shopfast.internal`, signed by the stack's CA. Servers require a
//! client certificate from that CA and learn the caller's identity from it
//! ([`Peer`]); clients check that the server proves the identity they meant
//! to reach, whatever address they dialled. Certificates come from files
//! (`tls.dir`, or `tls.ca_file` / `cert_file` / `key_file`) and are reloaded
//! when the files change, so they rotate without a restart. `shopfast up`
//! makes a development CA and a certificate per process in its data directory
//! ([`ensure_dev_certs`], as Linkerd's automatic mTLS: nothing to configure).
//! Plain text only behind an explicit `insecure` flag, warned about at start.
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

pub const TRUST_DOMAIN: &str = "shopfast.internal";
/// People and their tools: may call every method.
pub const OPERATOR: &str = "operator";
/// The deploy controller's identity: it may change traffic policies.
pub const DEPLOYER: &str = "deployer";
/// The registry's identity.
pub const REGISTRY: &str = "registry";
/// A handshake not finished in this time is dropped (a slow client holds nothing longer).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The SPIFFE ID of a service identity.
pub fn spiffe_id(identity: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/service/{identity}")
}

/// The name a server of `identity` proves in TLS, whatever address it is dialled at.
pub fn server_name(identity: &str) -> String {
    format!("{identity}.{TRUST_DOMAIN}")
}

/// Where a process's certificates come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Plain text, no identities: for tests and debugging only (warned at start).
    pub insecure: bool,
    /// A directory with `ca.pem`, `<identity>.pem` and `<identity>-key.pem`.
    pub dir: Option<PathBuf>,
    /// Or the files themselves (they win over `dir`).
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// How often the files are checked for a rotation.
    pub reload_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self { insecure: false, dir: None, ca_file: None, cert_file: None, key_file: None, reload_ms: 5_000 }
    }
}

impl TlsConfig {
    /// Plain text on purpose (tests, debugging).
    pub fn insecure() -> Self {
        Self { insecure: true, ..Self::default() }
    }

    /// The certificates in `dir` (as `shopfast certs` and `shopfast up` make them).
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self { dir: Some(dir.into()), ..Self::default() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "no certificates configured for {0}: set tls.dir (or tls.ca_file, tls.cert_file, tls.key_file); \
         `shopfast certs --dir DIR` makes a development set, `shopfast up` makes its own; \
         or run in plain text with --insecure"
    )]
    NotConfigured(String),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("making certificates: {0}")]
    Generate(String),
}

#[derive(Debug, Clone)]
struct Files {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn modified(&self) -> Vec<Option<SystemTime>> {
        [&self.ca, &self.cert, &self.key].iter().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
    }
}

/// What one load of the files gives.
struct Loaded {
    /// Client certificate required (gRPC servers).
    server: Arc<ServerConfig>,
    /// Client certificate optional (the registry: readers may have none; writers must).
    server_open: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    modified: Vec<Option<SystemTime>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Invalid { path: path.into(), message: e.to_string() })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid { path: path.into(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid { path: path.into(), message: "no certificate in it".into() });
    }
    Ok(certs)
}

impl Loaded {
    fn read(files: &Files) -> Result<Self, TlsError> {
        let modified = files.modified();
        let mut roots = RootCertStore::empty();
        for ca in read_certs(&files.ca)? {
            roots.add(ca).map_err(|e| TlsError::Invalid { path: files.ca.clone(), message: e.to_string() })?;
        }
        let roots = Arc::new(roots);
        let chain = read_certs(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| TlsError::Invalid { path: files.key.clone(), message: e.to_string() })?;
        let alpn = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let server_with = |anonymous: bool| -> Result<Arc<ServerConfig>, TlsError> {
            let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
            let verifier = if anonymous { builder.allow_unauthenticated().build() } else { builder.build() }
                .map_err(|e| TlsError::Invalid { path: files.ca.clone(), message: e.to_string() })?;
            let mut config = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())?;
            config.alpn_protocols = alpn.clone();
            Ok(Arc::new(config))
        };
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            server: server_with(false)?,
            server_open: server_with(true)?,
            client: Arc::new(client),
            roots,
            chain,
            key: Arc::new(key),
            modified,
        })
    }
}

/// A process's TLS identity: its certificate and the CA it trusts.
pub struct Tls {
    identity: String,
    files: Files,
    loaded: ArcSwap<Loaded>,
    reload: Duration,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("identity", &self.identity).field("cert", &self.files.cert).finish()
    }
}

impl Tls {
    /// The TLS of a process running as `identity`, from its config; `None`
    /// when it runs in plain text on purpose (`insecure`, warned about).
    pub fn from_config(config: &TlsConfig, identity: &str) -> Result<Option<Arc<Self>>, TlsError> {
        if config.insecure {
            tracing::warn!(
                identity,
                "running in PLAIN TEXT (insecure): no service identity, no encryption between processes"
            );
            return Ok(None);
        }
        let in_dir = |name: String| config.dir.as_ref().map(|dir| dir.join(name));
        let files = match (
            config.ca_file.clone().or_else(|| in_dir("ca.pem".into())),
            config.cert_file.clone().or_else(|| in_dir(format!("{identity}.pem"))),
            config.key_file.clone().or_else(|| in_dir(format!("{identity}-key.pem"))),
        ) {
            (Some(ca), Some(cert), Some(key)) => Files { ca, cert, key },
            _ => return Err(TlsError::NotConfigured(identity.to_string())),
        };
        let loaded = Loaded::read(&files)?;
        // The certificate must say who we are: a process cannot run as someone else.
        let named = peer_identity(&loaded.chain[0]);
        if named.as_deref() != Some(identity) {
            let message = format!("the certificate is for {named:?}, not {identity:?}");
            return Err(TlsError::Invalid { path: files.cert.clone(), message });
        }
        Ok(Some(Arc::new(Self {
            identity: identity.to_string(),
            files,
            loaded: ArcSwap::from_pointee(loaded),
            reload: Duration::from_millis(config.reload_ms.max(100)),
        })))
    }

    /// For a process that is only ever a client (the console reading the
    /// registry): its identity when certificates are configured, plain text
    /// when none are (its peers decide whether they accept that).
    pub fn optional(config: &TlsConfig, identity: &str) -> Result<Option<Arc<Self>>, TlsError> {
        let configured = config.dir.is_some() || config.ca_file.is_some();
        if configured { Self::from_config(config, identity) } else { Ok(None) }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// For a server that requires a client certificate.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.loaded.load().server.clone())
    }

    /// For a server whose readers may come without a certificate.
    pub fn open_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.loaded.load().server_open.clone())
    }

    /// Connects over `stream` to a server that must prove `identity`.
    pub async fn connect(
        &self,
        identity: &str,
        stream: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(server_name(identity)).map_err(io::Error::other)?;
        tokio_rustls::TlsConnector::from(self.loaded.load().client.clone()).connect(name, stream).await
    }

    /// A client config (our certificate, the CA) that accepts only a server
    /// proving `identity`, whatever host name the URL has (for HTTP clients).
    pub fn client_config_for(&self, identity: &str) -> Result<ClientConfig, TlsError> {
        let loaded = self.loaded.load();
        let inner = WebPkiServerVerifier::builder_with_provider(loaded.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Invalid { path: self.files.ca.clone(), message: e.to_string() })?;
        let name = ServerName::try_from(server_name(identity))
            .map_err(|e| TlsError::Invalid { path: self.files.cert.clone(), message: e.to_string() })?;
        let verifier = Arc::new(PinnedIdentity { inner, name });
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(loaded.chain.clone(), loaded.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Loads the files again if they changed (rotation); keeps the last good
    /// set when the new one is unreadable (half written, say).
    pub fn reload_if_changed(&self) -> bool {
        if self.files.modified() == self.loaded.load().modified {
            return false;
        }
        match Loaded::read(&self.files) {
            Ok(loaded) => {
                self.loaded.store(Arc::new(loaded));
                metrics::counter!("tls_reloads_total", "outcome" => "ok").increment(1);
                tracing::info!(identity = %self.identity, cert = %self.files.cert.display(), "certificates reloaded");
                true
            }
            Err(err) => {
                metrics::counter!("tls_reloads_total", "outcome" => "failed").increment(1);
                tracing::warn!(identity = %self.identity, error = %err, "new certificates unreadable; keeping the old ones");
                false
            }
        }
    }

    /// Checks the files every `reload_ms` until `shutdown`.
    pub fn spawn_reload(
        self: &Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(tls.reload);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => { tls.reload_if_changed(); }
                }
            }
        })
    }
}

/// Verifies the chain as usual, and the name as the identity we meant to
/// reach rather than the host we dialled.
#[derive(Debug)]
struct PinnedIdentity {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for PinnedIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The service identity a certificate names (its SPIFFE URI SAN), if any.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let prefix = format!("spiffe://{TRUST_DOMAIN}/service/");
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(&prefix).map(str::to_string),
        _ => None,
    })
}

/// Who is on the other end of a connection: its address, and the identity
/// its certificate proved (none in plain text, or for a reader of an open server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    pub identity: Option<String>,
}

/// An accepted connection, in plain text or TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A connection and who is on the other end of it.
pub struct ServerConn {
    pub io: Conn,
    pub peer: Peer,
}

/// Implements tokio's `AsyncRead` and `AsyncWrite` for an enum of streams by
/// delegating to the variant at hand.
#[macro_export]
macro_rules! delegate_io {
    ($ty:ty, $($variant:ident),+) => {
        impl tokio::io::AsyncRead for $ty {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() { $(Self::$variant(io) => std::pin::Pin::new(io).poll_read(cx, buf),)+ }
            }
        }

        impl tokio::io::AsyncWrite for $ty {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                match self.get_mut() { $(Self::$variant(io) => std::pin::Pin::new(io).poll_write(cx, buf),)+ }
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                match self.get_mut() { $(Self::$variant(io) => std::pin::Pin::new(io).poll_write_vectored(cx, bufs),)+ }
            }

            fn is_write_vectored(&self) -> bool {
                match self { $(Self::$variant(io) => io.is_write_vectored(),)+ }
            }

            fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() { $(Self::$variant(io) => std::pin::Pin::new(io).poll_flush(cx),)+ }
            }

            fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() { $(Self::$variant(io) => std::pin::Pin::new(io).poll_shutdown(cx),)+ }
            }
        }
    };
}

delegate_io!(Conn, Plain, Tls);

impl AsyncRead for ServerConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for ServerConn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

/// Whether a server requires client certificates or lets readers in without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    Optional,
}

/// Accepts connections on `listener` — plain, or TLS handshakes each on its
/// own task (a slow one holds up no other) with a deadline — and hands them
/// on with who is at the other end. Ends when the receiver is dropped (the
/// server stopped accepting: on shutdown it drains first, so it decides when).
pub fn accept(listener: TcpListener, tls: Option<(Arc<Tls>, ClientAuth)>) -> tokio::sync::mpsc::Receiver<ServerConn> {
    let (tx, rx) = tokio::sync::mpsc::channel(1_024);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, addr) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let Some((tls, auth)) = &tls else {
                if tx.send(ServerConn { io: Conn::Plain(stream), peer: Peer { addr, identity: None } }).await.is_err() {
                    break;
                }
                continue;
            };
            let acceptor = match auth {
                ClientAuth::Required => tls.acceptor(),
                ClientAuth::Optional => tls.open_acceptor(),
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let identity =
                            stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(peer_identity);
                        let _ = tx
                            .send(ServerConn { io: Conn::Tls(Box::new(stream)), peer: Peer { addr, identity } })
                            .await;
                    }
                    Ok(Err(err)) => {
                        metrics::counter!("tls_handshake_failures_total").increment(1);
                        tracing::debug!(%addr, error = %err, "TLS handshake refused");
                    }
                    Err(_) => {
                        metrics::counter!("tls_handshake_failures_total").increment(1);
                        tracing::debug!(%addr, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    rx
}

/// The files of a development CA and of one identity, under `dir`.
pub fn dev_cert_paths(dir: &Path, identity: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{identity}.pem")), dir.join(format!("{identity}-key.pem")))
}

fn ca_params() -> Result<rcgen::CertificateParams, TlsError> {
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| TlsError::Generate(e.to_string()))?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "shopfast development CA");
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3_650);
    Ok(params)
}

fn write_secret(path: &Path, text: &str) -> Result<(), TlsError> {
    write_owner_only(path, text).map_err(|source| TlsError::Read { path: path.into(), source })
}

/// Makes what is missing under `dir`: a development CA (`ca.pem`,
/// `ca-key.pem`) and, for each identity, `<identity>.pem` and
/// `<identity>-key.pem` (keys readable by the owner only). Certificates
/// already there are kept.
pub fn ensure_dev_certs(dir: &Path, identities: &[&str]) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Read { path: dir.into(), source })?;
    let (ca_path, ca_key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let ca_key = if ca_key_path.exists() && ca_path.exists() {
        let pem = std::fs::read_to_string(&ca_key_path)
            .map_err(|source| TlsError::Read { path: ca_key_path.clone(), source })?;
        rcgen::KeyPair::from_pem(&pem).map_err(gen_err)?
    } else {
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let ca = ca_params()?.self_signed(&key).map_err(gen_err)?;
        write_secret(&ca_key_path, &key.serialize_pem())?;
        std::fs::write(&ca_path, ca.pem()).map_err(|source| TlsError::Read { path: ca_path.clone(), source })?;
        key
    };
    // The issuer as the CA certificate names it (same name, same key).
    let issuer = ca_params()?.self_signed(&ca_key).map_err(gen_err)?;
    for identity in identities {
        let (cert_path, key_path) = dev_cert_paths(dir, identity);
        if cert_path.exists() && key_path.exists() {
            continue;
        }
        let mut params = rcgen::CertificateParams::new(vec![server_name(identity)]).map_err(gen_err)?;
        let uri = rcgen::Ia5String::try_from(spiffe_id(identity)).map_err(gen_err)?;
        params.subject_alt_names.push(rcgen::SanType::URI(uri));
        // A development stack runs on loopback: `curl --cacert ca.pem https://127.0.0.1:…` works.
        params.subject_alt_names.push(rcgen::SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        params.distinguished_name.push(rcgen::DnType::CommonName, identity.to_string());
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(365);
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&key, &issuer, &ca_key).map_err(gen_err)?;
        write_secret(&key_path, &key.serialize_pem())?;
        std::fs::write(&cert_path, cert.pem()).map_err(|source| TlsError::Read { path: cert_path.clone(), source })?;
    }
    Ok(())
}

/// Connections from [`accept`], for axum: each request knows its [`Peer`].
pub struct PeerListener {
    rx: tokio::sync::mpsc::Receiver<ServerConn>,
    local: std::net::SocketAddr,
}

impl PeerListener {
    pub fn new(rx: tokio::sync::mpsc::Receiver<ServerConn>, local: std::net::SocketAddr) -> Self {
        Self { rx, local }
    }
}

impl axum::serve::Listener for PeerListener {
    type Io = ServerConn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => {
                let peer = conn.peer.clone();
                (conn, peer)
            }
            // The acceptor stopped (shutdown): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer { addr: self.local, identity: None })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PeerListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, PeerListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Writes `text` to `path` (created or replaced), readable by its owner only:
/// for keys and secrets a process keeps on disk.
pub fn write_owner_only(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificates_name_their_identity_and_a_process_must_be_who_its_certificate_says() {
        let dir = tempfile::tempdir().unwrap();
        ensure_dev_certs(dir.path(), &["orders", "payments"]).unwrap();
        let config = TlsConfig { dir: Some(dir.path().into()), ..Default::default() };
        let tls = Tls::from_config(&config, "orders").unwrap().unwrap();
        assert_eq!(tls.identity(), "orders");
        let cert = read_certs(&dir.path().join("orders.pem")).unwrap();
        assert_eq!(peer_identity(&cert[0]).as_deref(), Some("orders"));
        // Running as payments with orders' certificate is refused.
        let config = TlsConfig {
            cert_file: Some(dir.path().join("orders.pem")),
            key_file: Some(dir.path().join("orders-key.pem")),
            ..config
        };
        let err = Tls::from_config(&config, "payments").unwrap_err().to_string();
        assert!(err.contains("not \"payments\""), "{err}");
        // Nothing configured: a clear refusal; insecure: none, on purpose.
        let err = Tls::from_config(&TlsConfig::default(), "users").unwrap_err().to_string();
        assert!(err.contains("--insecure"), "{err}");
        assert!(Tls::from_config(&TlsConfig { insecure: true, ..Default::default() }, "users").unwrap().is_none());
        // Keys are the owner's only; what exists is kept.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("orders-key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let before = std::fs::read(dir.path().join("orders.pem")).unwrap();
        ensure_dev_certs(dir.path(), &["orders", "users"]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("orders.pem")).unwrap(), before);
        assert!(dir.path().join("users.pem").exists());
    }
}
