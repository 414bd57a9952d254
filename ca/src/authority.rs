//! The certificate authority: a root and an intermediate, and issuance of X.509-SVIDs from CSRs.
//!
//! Issuance trusts nothing in the CSR but its public key, and that only after the CSR's own
//! signature proves possession of the private key. The SPIFFE ID comes from the caller, who has
//! decided what the requester is authorised for; every extension the CSR asks for is dropped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use thiserror::Error;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;

use crate::bundle::TrustBundle;
use crate::inspect::CertInfo;
use crate::keys::PrivateKey;
use crate::spiffe::{SpiffeId, TrustDomain};

/// Lifetime of an X.509-SVID when the caller asks for none in particular: 24 hours.
pub const DEFAULT_SVID_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How far NotBefore is set back from the issuing time, to absorb clock skew between nodes.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Lifetime of a generated root: 10 years.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Lifetime of a generated intermediate: 1 year (never past the root's).
pub const INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why an SVID was not issued, or a CA could not be built.
#[derive(Debug, Error)]
pub enum IssueError {
    /// The CSR is not DER PKCS#10.
    #[error("malformed CSR: {0}")]
    MalformedCsr(String),
    /// The CSR's signature does not verify with its own public key.
    #[error("the CSR's signature does not verify: the requester does not prove it holds the key")]
    BadCsrSignature,
    /// The CSR's key is of a type edgeward does not issue for.
    #[error("unsupported key in CSR ({0}); use ECDSA P-256, P-384 or Ed25519")]
    UnsupportedKey(String),
    /// The SPIFFE ID is in another trust domain than the CA's.
    #[error("cannot issue {id}: this CA serves trust domain {ca_domain}")]
    ForeignTrustDomain {
        /// The requested ID.
        id: SpiffeId,
        /// The CA's trust domain.
        ca_domain: TrustDomain,
    },
    /// The issuing certificate has expired or will expire before the leaf could start.
    #[error("the issuing CA certificate expired at {0:?}")]
    IssuerExpired(SystemTime),
    /// The requested lifetime is zero.
    #[error("the requested lifetime is zero")]
    ZeroLifetime,
    /// The issuing key does not belong to the issuing certificate.
    #[error("the CA private key does not match the CA certificate")]
    KeyMismatch,
    /// The issuing certificate is not a CA certificate.
    #[error("the issuing certificate is not a CA certificate")]
    IssuerNotCa,
    /// A certificate of the CA could not be parsed.
    #[error("unreadable CA certificate: {0}")]
    BadCaCert(String),
    /// rcgen or ring failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// An issued X.509-SVID chain (no private key: that stays with the requester).
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    /// The SPIFFE ID in the leaf's URI SAN.
    pub id: SpiffeId,
    /// The leaf first, then the intermediates up to (not including) the root.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's NotBefore.
    pub not_before: SystemTime,
    /// The leaf's NotAfter.
    pub not_after: SystemTime,
}

/// A root and an intermediate, freshly generated, for the caller to persist.
pub struct GeneratedHierarchy {
    /// The self-signed root.
    pub root_cert: CertificateDer<'static>,
    /// The root's key; keep it offline or at least 0600.
    pub root_key: PrivateKey,
    /// The intermediate that signs leaves.
    pub intermediate_cert: CertificateDer<'static>,
    /// The intermediate's key.
    pub intermediate_key: PrivateKey,
}

/// A signing CA: an issuing certificate with its key, the chain above it and the trust bundle.
pub struct Authority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    /// The issuing certificate, then any intermediates above it (never the root).
    chain: Vec<CertificateDer<'static>>,
    issuer_not_after: SystemTime,
    bundle: TrustBundle,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("issuer_not_after", &self.issuer_not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl GeneratedHierarchy {
    /// Generates a root (10 years) and an intermediate (1 year), both ECDSA P-256.
    pub fn generate(trust_domain: &TrustDomain, now: SystemTime) -> Result<Self, IssueError> {
        let root_key = PrivateKey::generate().map_err(|e| IssueError::Signing(e.to_string()))?;
        let root_params = ca_params(
            trust_domain,
            "root",
            &root_key,
            None,
            now,
            now + ROOT_LIFETIME,
        )?;
        let root = root_params.self_signed(root_key.pair()).map_err(signing)?;

        let intermediate_key =
            PrivateKey::generate().map_err(|e| IssueError::Signing(e.to_string()))?;
        let params = ca_params(
            trust_domain,
            "intermediate",
            &intermediate_key,
            Some(0),
            now,
            now + INTERMEDIATE_LIFETIME,
        )?;
        let root_issuer = Issuer::from_params(&root_params, root_key.pair());
        let intermediate = params
            .signed_by(intermediate_key.pair(), &root_issuer)
            .map_err(signing)?;

        Ok(Self {
            root_cert: root.der().clone(),
            root_key,
            intermediate_cert: intermediate.der().clone(),
            intermediate_key,
        })
    }

    /// The authority that signs with the intermediate, trusting the root.
    pub fn into_authority(self, trust_domain: TrustDomain) -> Result<Authority, IssueError> {
        let bundle = TrustBundle::new(trust_domain.clone(), vec![self.root_cert])
            .map_err(|e| IssueError::BadCaCert(e.to_string()))?;
        Authority::new(
            trust_domain,
            self.intermediate_cert,
            self.intermediate_key,
            vec![],
            bundle,
        )
    }
}

impl Authority {
    /// Builds a signing CA from an issuing certificate and its key.
    ///
    /// `above` holds any intermediates between the issuing certificate and a root of `bundle`.
    pub fn new(
        trust_domain: TrustDomain,
        issuer_cert: CertificateDer<'static>,
        issuer_key: PrivateKey,
        above: Vec<CertificateDer<'static>>,
        bundle: TrustBundle,
    ) -> Result<Self, IssueError> {
        let info =
            CertInfo::parse(&issuer_cert).map_err(|e| IssueError::BadCaCert(e.to_string()))?;
        if !info.is_ca {
            return Err(IssueError::IssuerNotCa);
        }
        if info.public_key_der != issuer_key.public_key_der() {
            return Err(IssueError::KeyMismatch);
        }
        let issuer =
            Issuer::from_ca_cert_der(&issuer_cert, issuer_key.into_pair()).map_err(signing)?;

        let mut chain = vec![issuer_cert];
        chain.extend(above);
        Ok(Self {
            trust_domain,
            issuer,
            chain,
            issuer_not_after: info.not_after,
            bundle,
        })
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots that issued chains end in.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// When the issuing certificate expires; no leaf outlives it.
    pub fn issuer_not_after(&self) -> SystemTime {
        self.issuer_not_after
    }

    /// Issues an X.509-SVID for `id` to the key in `csr_der`.
    ///
    /// The leaf is valid from `now - BACKDATE` for `lifetime`, cut short at the issuer's NotAfter.
    pub fn issue(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<IssuedSvid, IssueError> {
        let key = CsrKey::from_csr(csr_der)?;
        if id.trust_domain_name() != self.trust_domain.as_str() {
            return Err(IssueError::ForeignTrustDomain {
                id: id.clone(),
                ca_domain: self.trust_domain.clone(),
            });
        }
        if lifetime.is_zero() {
            return Err(IssueError::ZeroLifetime);
        }
        if now >= self.issuer_not_after {
            return Err(IssueError::IssuerExpired(self.issuer_not_after));
        }

        let not_before = now - BACKDATE;
        let not_after = (now + lifetime).min(self.issuer_not_after);
        let params = leaf_params(id, not_before, not_after)?;
        let leaf = params.signed_by(&key, &self.issuer).map_err(signing)?;

        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(IssuedSvid {
            id: id.clone(),
            chain,
            not_before: truncate_to_second(not_before),
            not_after: truncate_to_second(not_after),
        })
    }
}

/// The public key taken from a verified CSR.
struct CsrKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl CsrKey {
    fn from_csr(der: &[u8]) -> Result<Self, IssueError> {
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| IssueError::MalformedCsr(e.to_string()))?;
        if !rest.is_empty() {
            return Err(IssueError::MalformedCsr(format!(
                "{} bytes after the CSR",
                rest.len()
            )));
        }
        csr.verify_signature()
            .map_err(|_| IssueError::BadCsrSignature)?;

        let spki = &csr.certification_request_info.subject_pki;
        let alg_oid = &spki.algorithm.algorithm;
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let alg = if *alg_oid == OID_KEY_TYPE_EC_PUBLIC_KEY && curve == Some(OID_EC_P256) {
            &rcgen::PKCS_ECDSA_P256_SHA256
        } else if *alg_oid == OID_KEY_TYPE_EC_PUBLIC_KEY && curve == Some(OID_NIST_EC_P384) {
            &rcgen::PKCS_ECDSA_P384_SHA384
        } else if *alg_oid == OID_SIG_ED25519 {
            &rcgen::PKCS_ED25519
        } else {
            return Err(IssueError::UnsupportedKey(format!("algorithm {alg_oid}")));
        };
        Ok(Self {
            raw: spki.subject_public_key.data.to_vec(),
            alg,
        })
    }
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// Parameters of a CA certificate. The name carries a digest of the key, so that two CAs of the
/// same trust domain never share a subject: chain building then fails as "unknown issuer" for a
/// foreign CA, not as a signature mismatch against a namesake.
fn ca_params(
    trust_domain: &TrustDomain,
    role: &str,
    key: &PrivateKey,
    path_len: Option<u8>,
    now: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, IssueError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "edgeward");
    params.distinguished_name.push(
        DnType::CommonName,
        format!("edgeward {role} CA {trust_domain} {}", key_tag(key)),
    );
    params.is_ca = match path_len {
        Some(n) => IsCa::Ca(BasicConstraints::Constrained(n)),
        None => IsCa::Ca(BasicConstraints::Unconstrained),
    };
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - BACKDATE).into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn leaf_params(
    id: &SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, IssueError> {
    let uri = id
        .as_str()
        .try_into()
        .map_err(|e: rcgen::Error| IssueError::Signing(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "edgeward");
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A positive 128-bit serial number from the system CSPRNG.
fn random_serial() -> Result<SerialNumber, IssueError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IssueError::Signing("the system random source failed".into()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Eight hex digits of the SHA-256 of the public key.
fn key_tag(key: &PrivateKey) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, &key.public_key_der());
    digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn signing(e: rcgen::Error) -> IssueError {
    IssueError::Signing(e.to_string())
}

/// X.509 times have whole seconds; report the times as they appear in the certificate.
fn truncate_to_second(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(secs)
}
