//! Trust bundles: the set of root certificates that a trust domain's chains may end in.
//!
//! A bundle holds several roots at once so that a root can be rotated without downtime: the new
//! root is added, leaves move over to it, then the old root is removed.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls_pki_types::{CertificateDer, TrustAnchor};
use thiserror::Error;

use crate::pem::{self, PemError};
use crate::spiffe::TrustDomain;

/// Why a trust bundle could not be built or loaded.
#[derive(Debug, Error)]
pub enum BundleError {
    /// The bundle holds no root at all.
    #[error("the trust bundle holds no root certificate")]
    Empty,
    /// The PEM text could not be read.
    #[error("the trust bundle is not valid PEM: {0}")]
    Pem(#[from] PemError),
    /// One of the certificates cannot serve as a trust anchor.
    #[error("root certificate #{index} in the trust bundle is unusable: {reason}")]
    BadRoot {
        /// Position of the certificate in the bundle, from 0.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading the file failed.
    #[error("cannot read trust bundle {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The roots of one trust domain, ready for chain verification.
#[derive(Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// Builds a bundle from DER roots; every root must parse as a trust anchor.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        let anchors = roots
            .iter()
            .enumerate()
            .map(|(index, der)| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|a| a.to_owned())
                    .map_err(|e| BundleError::BadRoot {
                        index,
                        reason: format!("{e:?}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            trust_domain,
            roots,
            anchors,
        })
    }

    /// Reads a bundle from PEM text (one or more `CERTIFICATE` blocks).
    pub fn from_pem(trust_domain: TrustDomain, text: &str) -> Result<Self, BundleError> {
        Self::new(trust_domain, pem::decode_certs(text)?)
    }

    /// Reads a bundle from a PEM file.
    pub fn load(trust_domain: TrustDomain, path: &Path) -> Result<Self, BundleError> {
        let text = std::fs::read_to_string(path).map_err(|source| BundleError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(trust_domain, &text)
    }

    /// Writes the bundle as PEM, atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        crate::files::write_public(path, self.to_pem().as_bytes())
    }

    /// The bundle as PEM text.
    pub fn to_pem(&self) -> String {
        pem::encode_certs(&self.roots)
    }

    /// The trust domain these roots belong to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as webpki trust anchors.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .finish()
    }
}

/// A bundle that can be replaced at runtime; verifiers read the current one at each handshake.
#[derive(Clone, Debug)]
pub struct SharedBundle(Arc<RwLock<Arc<TrustBundle>>>);

impl SharedBundle {
    /// Wraps a bundle.
    pub fn new(bundle: TrustBundle) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(bundle))))
    }

    /// The bundle in force now.
    pub fn current(&self) -> Arc<TrustBundle> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the bundle for every later handshake.
    pub fn replace(&self, bundle: TrustBundle) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(bundle);
    }
}
