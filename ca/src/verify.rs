//! Peer verification by SPIFFE ID: the chain must lead to a root of the trust bundle, and the
//! leaf's one URI SAN must be a canonical SPIFFE ID that the caller accepts. DNS names and IP
//! addresses in a certificate are never consulted.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use rustls::{Error as TlsError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use thiserror::Error;
use webpki::{EndEntityCert, KeyUsage};

use crate::bundle::SharedBundle;
use crate::inspect::{spiffe_id_of, SvidError};
use crate::spiffe::{IdKind, SpiffeId};

/// Why a peer's certificate was refused. Each security rejection has its own variant so that
/// tests can assert it and metrics can count it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// The chain does not end in a root of the trust bundle (a foreign CA, say).
    #[error("the certificate chain does not lead to a root of the trust bundle")]
    UnknownIssuer,
    /// A certificate of the chain has expired.
    #[error("the certificate has expired")]
    Expired,
    /// A certificate of the chain is not valid yet.
    #[error("the certificate is not valid yet")]
    NotYetValid,
    /// The leaf is a CA certificate.
    #[error("the peer's leaf certificate is a CA certificate")]
    LeafIsCa,
    /// The chain is broken in another way.
    #[error("invalid certificate chain: {0}")]
    BadChain(String),
    /// The leaf is not a valid X.509-SVID (no, several or a non-canonical SPIFFE ID).
    #[error(transparent)]
    NotSvid(#[from] SvidError),
    /// The SPIFFE ID is in a trust domain this bundle does not serve.
    #[error("the peer's SPIFFE ID {got} is outside trust domain {want}")]
    ForeignTrustDomain {
        /// The peer's ID.
        got: SpiffeId,
        /// The trust domain of the bundle.
        want: String,
    },
    /// The SPIFFE ID is not the one expected.
    #[error("the peer is {got}, expected {want}")]
    IdentityMismatch {
        /// The peer's ID.
        got: SpiffeId,
        /// The expected ID.
        want: SpiffeId,
    },
    /// The SPIFFE ID is valid but names a kind of identity not allowed here.
    #[error("the peer identity {0} is not allowed on this connection")]
    KindNotAllowed(SpiffeId),
}

impl VerifyError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownIssuer => "unknown_issuer",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::LeafIsCa => "leaf_is_ca",
            Self::BadChain(_) => "bad_chain",
            Self::NotSvid(SvidError::InvalidSpiffeId { .. }) => "invalid_spiffe_id",
            Self::NotSvid(_) => "not_svid",
            Self::ForeignTrustDomain { .. } => "foreign_trust_domain",
            Self::IdentityMismatch { .. } => "identity_mismatch",
            Self::KindNotAllowed(_) => "identity_not_allowed",
        }
    }

    fn from_webpki(e: webpki::Error) -> Self {
        match e {
            webpki::Error::UnknownIssuer => Self::UnknownIssuer,
            webpki::Error::CertExpired { .. } => Self::Expired,
            webpki::Error::CertNotValidYet { .. } => Self::NotYetValid,
            webpki::Error::CaUsedAsEndEntity => Self::LeafIsCa,
            other => Self::BadChain(format!("{other:?}")),
        }
    }

    fn into_tls(self) -> TlsError {
        TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

/// A short label for why a TLS handshake failed, for metrics and logs.
pub fn rejection_reason(err: &TlsError) -> &'static str {
    match err {
        TlsError::InvalidCertificate(_) => verify_error_of(err)
            .map(VerifyError::reason)
            .unwrap_or("bad_certificate"),
        TlsError::NoCertificatesPresented => "no_certificate",
        TlsError::InvalidMessage(_)
        | TlsError::InappropriateMessage { .. }
        | TlsError::InappropriateHandshakeMessage { .. } => "not_tls",
        TlsError::AlertReceived(_) => "peer_alert",
        TlsError::PeerIncompatible(_) | TlsError::NoApplicationProtocol => "incompatible",
        TlsError::PeerMisbehaved(_) => "peer_misbehaved",
        _ => "other",
    }
}

/// The verifier's refusal inside a rustls error, if that is what failed the handshake.
pub fn verify_error_of(err: &TlsError) -> Option<&VerifyError> {
    match err {
        TlsError::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<VerifyError>()
        }
        _ => None,
    }
}

/// Whether a handshake failed (as tokio-rustls reports it) because a verifier refused the
/// peer's certificate; such refusals reach the verifier's observer already.
pub fn is_verifier_refusal(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
        .and_then(verify_error_of)
        .is_some()
}

/// The same label for a handshake error as tokio-rustls reports it (an I/O error that wraps the
/// rustls error); plain I/O failures are labelled `io`.
pub fn io_rejection_reason(error: &std::io::Error) -> &'static str {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
        .map(rejection_reason)
        .unwrap_or("io")
}

/// The SPIFFE IDs a verifier accepts, always within the bundle's trust domain.
#[derive(Debug, Clone)]
pub enum PeerPolicy {
    /// Exactly this ID.
    Exact(SpiffeId),
    /// Any workload ID (`/ns/<ns>/sa/<sa>`).
    AnyWorkload,
    /// Any ID of the trust domain; the caller checks the kind afterwards.
    AnyInTrustDomain,
}

impl PeerPolicy {
    fn check(&self, got: SpiffeId) -> Result<SpiffeId, VerifyError> {
        match self {
            Self::Exact(want) if *want != got => Err(VerifyError::IdentityMismatch {
                got,
                want: want.clone(),
            }),
            Self::AnyWorkload if !matches!(got.kind(), IdKind::Workload { .. }) => {
                Err(VerifyError::KindNotAllowed(got))
            }
            _ => Ok(got),
        }
    }
}

/// Called with every refusal a verifier makes, so that callers count refusals by reason
/// whatever transport carried the handshake.
pub type RejectionObserver = Arc<dyn Fn(&VerifyError) + Send + Sync>;

/// Verifies certificate chains against the current trust bundle and a [`PeerPolicy`].
#[derive(Clone)]
pub struct SpiffeVerifier {
    bundle: SharedBundle,
    policy: PeerPolicy,
    algorithms: WebPkiSupportedAlgorithms,
    observer: Option<RejectionObserver>,
}

impl std::fmt::Debug for SpiffeVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpiffeVerifier")
            .field("bundle", &self.bundle)
            .field("policy", &self.policy)
            .finish()
    }
}

impl SpiffeVerifier {
    /// A verifier reading `bundle` at every handshake.
    pub fn new(bundle: SharedBundle, policy: PeerPolicy) -> Self {
        let provider = crate::tls::provider();
        Self {
            bundle,
            policy,
            algorithms: provider.signature_verification_algorithms,
            observer: None,
        }
    }

    /// The same verifier, reporting each refusal to `observer` as well.
    pub fn with_observer(mut self, observer: RejectionObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Verifies a presented chain for the given key usage and returns the peer's SPIFFE ID.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<SpiffeId, VerifyError> {
        let result = self.check(end_entity, intermediates, now, usage);
        if let (Err(e), Some(observer)) = (&result, &self.observer) {
            observer(e);
        }
        result
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<SpiffeId, VerifyError> {
        let bundle = self.bundle.current();
        let cert = EndEntityCert::try_from(end_entity)
            .map_err(|e| VerifyError::BadChain(format!("{e:?}")))?;
        cert.verify_for_usage(
            self.algorithms.all,
            bundle.anchors(),
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(VerifyError::from_webpki)?;

        let id = spiffe_id_of(end_entity)?;
        if id.trust_domain_name() != bundle.trust_domain().as_str() {
            return Err(VerifyError::ForeignTrustDomain {
                got: id,
                want: bundle.trust_domain().to_string(),
            });
        }
        self.policy.check(id)
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }
}

/// Verifies a server (the client side of a connection); the server name is ignored.
#[derive(Debug)]
pub struct ServerVerifier(pub SpiffeVerifier);

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        self.0
            .verify(end_entity, intermediates, now, KeyUsage::server_auth())
            .map_err(VerifyError::into_tls)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}

/// Verifies a client certificate (the server side of a connection).
#[derive(Debug)]
pub struct ClientVerifier {
    inner: SpiffeVerifier,
    mandatory: bool,
}

impl ClientVerifier {
    /// A verifier that refuses clients without a certificate when `mandatory` is set.
    pub fn new(inner: SpiffeVerifier, mandatory: bool) -> Self {
        Self { inner, mandatory }
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.inner
            .verify(end_entity, intermediates, now, KeyUsage::client_auth())
            .map_err(VerifyError::into_tls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.algorithms.supported_schemes()
    }
}
