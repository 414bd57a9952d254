//! Reading certificates: validity, CA flag, names, and the SPIFFE ID of an X.509-SVID.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Why a certificate is not a usable X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SvidError {
    /// The DER could not be parsed.
    #[error("unparsable certificate: {0}")]
    Unparsable(String),
    /// The certificate has no URI SAN.
    #[error("the certificate carries no SPIFFE ID (no URI SAN)")]
    NoSpiffeId,
    /// The certificate has more than one URI SAN.
    #[error("the certificate carries {0} URI SANs; an X.509-SVID has exactly one")]
    SeveralUris(usize),
    /// The URI SAN is not a canonical SPIFFE ID.
    #[error("the certificate's URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    InvalidSpiffeId {
        /// The URI as found in the certificate.
        uri: String,
        /// The rule it breaks.
        reason: SpiffeIdError,
    },
}

/// What a certificate says about itself.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// The subject distinguished name, RFC 4514 style.
    pub subject: String,
    /// The issuer distinguished name.
    pub issuer: String,
    /// The serial number, hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Whether basicConstraints says CA.
    pub is_ca: bool,
    /// Every URI SAN, as written.
    pub uris: Vec<String>,
    /// The DER SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn parse(der: &[u8]) -> Result<Self, SvidError> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| SvidError::Unparsable(e.to_string()))?;
        if !rest.is_empty() {
            return Err(SvidError::Unparsable(format!(
                "{} bytes after the certificate",
                rest.len()
            )));
        }
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            not_before: to_system_time(cert.validity().not_before.timestamp()),
            not_after: to_system_time(cert.validity().not_after.timestamp()),
            is_ca: cert.is_ca(),
            uris: uri_sans(&cert)?,
            public_key_der: cert.public_key().raw.to_vec(),
        })
    }

    /// The SPIFFE ID of an X.509-SVID: its one URI SAN, which must be canonical.
    pub fn spiffe_id(&self) -> Result<SpiffeId, SvidError> {
        match self.uris.as_slice() {
            [] => Err(SvidError::NoSpiffeId),
            [uri] => SpiffeId::parse(uri).map_err(|reason| SvidError::InvalidSpiffeId {
                uri: uri.clone(),
                reason,
            }),
            many => Err(SvidError::SeveralUris(many.len())),
        }
    }
}

/// The SPIFFE ID of a DER X.509-SVID.
pub fn spiffe_id_of(der: &[u8]) -> Result<SpiffeId, SvidError> {
    CertInfo::parse(der)?.spiffe_id()
}

fn uri_sans(cert: &X509Certificate<'_>) -> Result<Vec<String>, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Unparsable(e.to_string()))?;
    let Some(san) = san else {
        return Ok(vec![]);
    };
    let uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        });
    Ok(uris.collect())
}

fn to_system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    }
}
