//! rustls configuration for edgeward: TLS 1.3 only, the ring provider, SPIFFE verification, and
//! certificates that can be swapped at runtime so that rotation never needs a new listener.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName};
use thiserror::Error;

use crate::inspect::{CertInfo, SvidError};
use crate::keys::{KeyError, PrivateKey};
use crate::spiffe::SpiffeId;
use crate::verify::ServerVerifier;

/// The crypto provider every edgeward TLS endpoint uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why an SVID could not be assembled from a chain and a key.
#[derive(Debug, Error)]
pub enum SvidSetupError {
    /// The chain is empty.
    #[error("the certificate chain is empty")]
    EmptyChain,
    /// The leaf cannot be read or is not an SVID.
    #[error(transparent)]
    Leaf(#[from] SvidError),
    /// The leaf names another ID than expected.
    #[error("the certificate is for {got}, not {want}")]
    WrongId {
        /// The ID in the leaf.
        got: SpiffeId,
        /// The ID asked for.
        want: SpiffeId,
    },
    /// The leaf's public key is not the key's.
    #[error("the certificate does not belong to the private key")]
    KeyMismatch,
    /// The key could not be loaded for signing.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A certificate file is not PEM.
    #[error("{0}: {1}")]
    Pem(String, crate::pem::PemError),
}

/// An X.509-SVID with its private key, ready to present in handshakes.
pub struct Svid {
    id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKey,
    not_before: SystemTime,
    not_after: SystemTime,
    certified: Arc<CertifiedKey>,
}

impl Svid {
    /// Checks that the leaf is an SVID for `id` and belongs to `key`.
    pub fn new(
        id: SpiffeId,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKey,
    ) -> Result<Self, SvidSetupError> {
        let leaf = chain.first().ok_or(SvidSetupError::EmptyChain)?;
        let info = CertInfo::parse(leaf)?;
        let got = info.spiffe_id()?;
        if got != id {
            return Err(SvidSetupError::WrongId { got, want: id });
        }
        if info.public_key_der != key.public_key_der() {
            return Err(SvidSetupError::KeyMismatch);
        }
        let certified = Arc::new(CertifiedKey::new(chain.clone(), key.signing_key()?));
        Ok(Self {
            id,
            chain,
            key,
            not_before: info.not_before,
            not_after: info.not_after,
            certified,
        })
    }

    /// The SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// Leaf first, then intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key; never log it.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// Start of the leaf's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the leaf's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Loads an SVID from a PEM chain file and a PEM key file; the ID is read from the leaf.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, SvidSetupError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| SvidSetupError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let chain = crate::pem::decode_certs(&read(cert_path)?)
            .map_err(|e| SvidSetupError::Pem(cert_path.display().to_string(), e))?;
        let key = PrivateKey::from_pem(&read(key_path)?)?;
        let id = CertInfo::parse(chain.first().ok_or(SvidSetupError::EmptyChain)?)?.spiffe_id()?;
        Self::new(id, chain, key)
    }

    /// Writes the chain (0644) and the key (0600), each atomically.
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> std::io::Result<()> {
        crate::files::write_secret(key_path, self.key.to_pem().as_bytes())?;
        crate::files::write_public(cert_path, crate::pem::encode_certs(&self.chain).as_bytes())
    }

    /// Writes the key and the chain into one file (0600), atomically: a crash leaves the old
    /// pair or the new one, never a key beside a certificate that is not its own.
    pub fn save_combined(&self, path: &Path) -> std::io::Result<()> {
        let text = self.key.to_pem() + &crate::pem::encode_certs(&self.chain);
        crate::files::write_secret(path, text.as_bytes())
    }

    /// Loads an SVID written by [`Svid::save_combined`].
    pub fn load_combined(path: &Path) -> Result<Self, SvidSetupError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SvidSetupError::Io {
            path: shown.clone(),
            source,
        })?;
        let (key, certs) =
            crate::pem::split_key_and_certs(&text).map_err(|e| SvidSetupError::Pem(shown, e))?;
        let key = PrivateKey::from_pem(&key)?;
        let id = CertInfo::parse(certs.first().ok_or(SvidSetupError::EmptyChain)?)?.spiffe_id()?;
        Self::new(id, certs, key)
    }

    /// The chain and key in the form rustls presents.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// A certificate slot that handshakes read at the moment they need it, so that a rotated
/// certificate is used by the next handshake without rebuilding any configuration.
#[derive(Debug, Default)]
pub struct CertSlot(RwLock<Option<Arc<CertifiedKey>>>);

impl CertSlot {
    /// A slot holding `key`.
    pub fn with(key: Arc<CertifiedKey>) -> Self {
        Self(RwLock::new(Some(key)))
    }

    /// Puts a new certificate in the slot.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }

    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

/// A TLS 1.3 client configuration that verifies the server with `verifier` and presents the
/// certificate in `client_cert`, if any.
pub fn client_config(
    verifier: ServerVerifier,
    client_cert: Option<Arc<dyn ResolvesClientCert>>,
    alpn: &[&[u8]],
) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match client_cert {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A TLS 1.3 server configuration that verifies clients with `verifier` and presents the
/// certificate that `certs` picks.
pub fn server_config(
    verifier: Arc<dyn ClientCertVerifier>,
    certs: Arc<dyn ResolvesServerCert>,
    alpn: &[&[u8]],
) -> ServerConfig {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// The TLS server name (SNI) a client sends to say which SPIFFE ID it expects the server to
/// present. It is a hash, not a name: the verifier checks the SPIFFE ID itself, never this name.
pub fn sni_for(id: &SpiffeId) -> ServerName<'static> {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_str().as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    ServerName::try_from(format!("{hex}.spiffe.invalid")).expect("hex labels form a DNS name")
}
