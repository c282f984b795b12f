//! TLS of `rediss://` connections: the rustls client configuration handed to
//! fred (a private CA or the system's roots, a client certificate), and what a
//! failed handshake means, in words.
//!
//! fred keeps only the text of a handshake error, so the certificate verifier
//! here wraps rustls's own and remembers the last verdict against the
//! server's certificate: an untrusted issuer, an expiry and a name mismatch
//! are told apart from that typed error (kept as the `source()`), not from
//! fred's text. A server that does not speak TLS is recognised by the
//! handshake failing (or timing out) after the client hello was built (rustls
//! asks its session store for a ticket then: the TCP connection was up) and
//! before any certificate was seen. Nothing here falls back to plaintext: fred
//! is given a TLS connector, or the URL is `redis://`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use fred::prelude::Error as FredError;
use fred::types::config::{TlsConfig, TlsConnector, TlsHostMapping};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue,
    Tls13ClientSessionValue, WebPkiServerVerifier,
};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::NamedGroup;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::TlsOptions;
use crate::error::{Error, ErrorKind, Result};

/// The TLS side of one connection: fred's configuration and what the
/// verifier saw.
pub(super) struct Tls {
    /// Given to fred (`Config::tls`).
    pub(super) fred: TlsConfig,
    /// The last verdict of the verifier against a server certificate.
    rejected: Arc<Mutex<Option<rustls::Error>>>,
    /// Whether the verifier was shown a certificate at all.
    seen: Arc<Mutex<bool>>,
    /// Whether a client hello was built (the TCP connection was up).
    hello: Arc<Mutex<bool>>,
    /// Whom the client trusts, for messages: "the CA in <file>" or "the system's roots".
    trusted: String,
    /// The client certificate file, if any (for messages).
    cert_file: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("trusted", &self.trusted)
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

/// A file's problem, naming the file and never quoting it (it may be a key).
fn file_error(what: &str, path: &Path, error: pem::Error) -> Error {
    let path = path.display();
    match error {
        pem::Error::Io(error) => Error::new(
            ErrorKind::InvalidConfig,
            format!("cannot read the TLS {what} file {path}: {error}"),
        )
        .with_source(error),
        pem::Error::NoItemsFound => Error::new(
            ErrorKind::InvalidConfig,
            format!("the TLS {what} file {path} holds no PEM {what}"),
        ),
        _ => Error::new(
            ErrorKind::InvalidConfig,
            format!("the TLS {what} file {path} is not valid PEM"),
        ),
    }
}

fn certificates(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| file_error(what, path, error))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|error| file_error(what, path, error))?;
    if certificates.is_empty() {
        return Err(file_error(what, path, pem::Error::NoItemsFound));
    }
    Ok(certificates)
}

impl Tls {
    /// Reads the files of `options` and builds the client configuration.
    ///
    /// # Errors
    ///
    /// `InvalidConfig` naming the file that cannot be read or holds no
    /// certificate (or key), or a key that does not match its certificate.
    pub(super) fn new(options: &TlsOptions) -> Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let trusted = match &options.ca_file {
            Some(path) => {
                for certificate in certificates("CA certificate", path)? {
                    roots.add(certificate).map_err(|error| {
                        Error::new(
                            ErrorKind::InvalidConfig,
                            format!(
                                "the TLS CA certificate file {} holds a certificate rustls cannot use: {error}",
                                path.display()
                            ),
                        )
                        .with_source(error)
                    })?;
                }
                format!("the CA in {}", path.display())
            }
            None => {
                // As fred's default: the operating system's roots.
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(Error::new(
                        ErrorKind::InvalidConfig,
                        "rediss:// without a CA file, and no usable CA certificate among the \
                         system's roots: set RedisConfig::tls.ca_file (TICKBUS_REDIS_CA_FILE)",
                    ));
                }
                "the system's roots".to_string()
            }
        };
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|error| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!("cannot trust {trusted}: {error}"),
                )
                .with_source(error)
            })?;
        let rejected = Arc::new(Mutex::new(None));
        let seen = Arc::new(Mutex::new(false));
        let verifier = Arc::new(RecordingVerifier {
            inner,
            rejected: rejected.clone(),
            seen: seen.clone(),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| {
                Error::new(ErrorKind::InvalidConfig, format!("rustls: {error}")).with_source(error)
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let hello = Arc::new(Mutex::new(false));
        let mut config = match (&options.cert_file, &options.key_file) {
            (Some(cert_file), Some(key_file)) => {
                let chain = certificates("client certificate", cert_file)?;
                let key = PrivateKeyDer::from_pem_file(key_file)
                    .map_err(|error| file_error("private key", key_file, error))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|error| {
                        // rustls's message names no key material.
                        Error::new(
                            ErrorKind::InvalidConfig,
                            format!(
                                "the TLS client certificate {} and key {} cannot be used together: {error}",
                                cert_file.display(),
                                key_file.display()
                            ),
                        )
                        .with_source(error)
                    })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    "RedisConfig::tls.cert_file and tls.key_file must be set together (mutual TLS)",
                ))
            }
        };
        config.resumption = Resumption::store(Arc::new(HelloWatch {
            inner: ClientSessionMemoryCache::new(32),
            hello: hello.clone(),
        }));
        Ok(Tls {
            fred: TlsConfig {
                connector: TlsConnector::from(config),
                hostnames: TlsHostMapping::None,
            },
            rejected,
            seen,
            hello,
            trusted,
            cert_file: options
                .cert_file
                .as_ref()
                .map(|path| path.display().to_string()),
        })
    }

    /// What a failed connection attempt means, when it was a TLS failure:
    /// `None` for anything else (refused, timed out, wrong password).
    ///
    /// `server` is the redacted URL; `name` the name the certificate was
    /// checked against.
    pub(super) fn explain(&self, error: &FredError, server: &str, name: &str) -> Option<Error> {
        let context = format!("TLS to Redis at {server}");
        if let Some(rejected) = self.rejected.lock().ok()?.take() {
            let (kind, message) = match &rejected {
                rustls::Error::InvalidCertificate(certificate) => match certificate {
                    CertificateError::UnknownIssuer => (
                        ErrorKind::Unavailable,
                        format!(
                            "the server's certificate is not trusted: unknown issuer (it is not \
                             signed by {}; set RedisConfig::tls.ca_file or TICKBUS_REDIS_CA_FILE \
                             to the CA that signed it)",
                            self.trusted
                        ),
                    ),
                    CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
                        ErrorKind::Unavailable,
                        format!("the server's certificate has expired ({rejected})"),
                    ),
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
                        ErrorKind::Unavailable,
                        format!("the server's certificate is not valid yet ({rejected})"),
                    ),
                    CertificateError::NotValidForName => (
                        ErrorKind::Unavailable,
                        format!(
                            "the server's certificate is not valid for the name \"{name}\"; connect \
                             by a name it carries or set RedisConfig::tls.server_name \
                             (TICKBUS_REDIS_TLS_SERVER_NAME)"
                        ),
                    ),
                    CertificateError::NotValidForNameContext { presented, .. } => (
                        ErrorKind::Unavailable,
                        format!(
                            "the server's certificate is not valid for the name \"{name}\" (it \
                             names {}); connect by a name it carries or set \
                             RedisConfig::tls.server_name (TICKBUS_REDIS_TLS_SERVER_NAME)",
                            presented
                                .iter()
                                .map(|name| plain_name(name))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ),
                    _ => (
                        ErrorKind::Unavailable,
                        format!("the server's certificate was refused: {rejected}"),
                    ),
                },
                _ => (
                    ErrorKind::Unavailable,
                    format!("the server's certificate was refused: {rejected}"),
                ),
            };
            return Some(Error::new(kind, format!("{context}: {message}")).with_source(rejected));
        }
        let details = error.details();
        let alert = |name: &str| details.contains(&format!("AlertReceived({name})"));
        if alert("CertificateRequired")
            || alert("HandshakeFailure") && self.cert_file.is_none() && self.seen()
        {
            let message = match &self.cert_file {
                None => "the server requires a client certificate (mutual TLS): set \
                         RedisConfig::tls.cert_file and key_file (TICKBUS_REDIS_CERT_FILE, \
                         TICKBUS_REDIS_KEY_FILE)"
                    .to_string(),
                Some(file) => format!("the server did not accept the client certificate {file}"),
            };
            return Some(Error::new(ErrorKind::Auth, format!("{context}: {message}")));
        }
        if [
            "BadCertificate",
            "UnknownCA",
            "CertificateUnknown",
            "DecryptError",
            "AccessDenied",
        ]
        .iter()
        .any(|name| alert(name))
        {
            let whose = match &self.cert_file {
                Some(file) => format!("the client certificate {file}"),
                None => "the client (no client certificate was given)".to_string(),
            };
            return Some(Error::new(
                ErrorKind::Auth,
                format!("{context}: the server did not accept {whose}: {}", details),
            ));
        }
        if flag(&self.hello) && !self.seen() {
            // A client hello went out on a TCP connection, and no certificate
            // came back: the server answered something that is not TLS, closed
            // the connection, or said nothing until the timeout.
            return Some(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "{context}: the server did not answer TLS (is this port plaintext? a \
                     rediss:// URL never falls back to plaintext): {}",
                    super::readable_io_error(details)
                ),
            ));
        }
        None
    }

    fn seen(&self) -> bool {
        flag(&self.seen)
    }
}

/// `redis.internal` for rustls's `DnsName("redis.internal")` (and the like).
fn plain_name(presented: &str) -> &str {
    match presented.split_once('(') {
        Some((_, inner)) => inner.trim_end_matches(')').trim_matches('"'),
        None => presented,
    }
}

fn flag(flag: &Mutex<bool>) -> bool {
    flag.lock().map(|flag| *flag).unwrap_or(false)
}

fn raise(flag: &Mutex<bool>) {
    if let Ok(mut flag) = flag.lock() {
        *flag = true;
    }
}

/// rustls's in-memory session store, noting that a client hello is being
/// built (rustls looks for a ticket to resume, and for the key-exchange group
/// the server chose last time, when it starts a handshake).
#[derive(Debug)]
struct HelloWatch {
    inner: ClientSessionMemoryCache,
    hello: Arc<Mutex<bool>>,
}

impl ClientSessionStore for HelloWatch {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        raise(&self.hello);
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        raise(&self.hello);
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.inner.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        raise(&self.hello);
        self.inner.take_tls13_ticket(server_name)
    }
}

/// rustls's verifier, remembering its verdict (see the module doc).
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    rejected: Arc<Mutex<Option<rustls::Error>>>,
    seen: Arc<Mutex<bool>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        raise(&self.seen);
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if let Ok(mut rejected) = self.rejected.lock() {
            *rejected = verdict.as_ref().err().cloned();
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
