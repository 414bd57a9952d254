//! Private keys: generated where they are used, never printed, written only with mode 0600.

use std::fmt;
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::sign::SigningKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;

/// Why a key could not be generated, loaded or used.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The PEM text is not a PKCS#8 private key that rcgen and ring can load.
    #[error("the private key is not a PKCS#8 ECDSA P-256, P-384 or Ed25519 key in PEM")]
    Unreadable,
    /// Key generation or CSR signing failed inside the crypto provider.
    #[error("the crypto provider failed: {0}")]
    Crypto(String),
}

/// An ECDSA P-256 private key. Its Debug output never shows key material.
pub struct PrivateKey {
    pair: KeyPair,
}

impl PrivateKey {
    /// Generates a fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self, KeyError> {
        let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| KeyError::Crypto(e.to_string()))?;
        Ok(Self { pair })
    }

    /// Loads a PKCS#8 key from PEM.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let pair = KeyPair::from_pem(pem).map_err(|_| KeyError::Unreadable)?;
        Ok(Self { pair })
    }

    /// The key as PKCS#8 PEM, for writing to a 0600 file; never log this.
    pub fn to_pem(&self) -> String {
        self.pair.serialize_pem()
    }

    /// The DER SubjectPublicKeyInfo of the key.
    pub fn public_key_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.pair)
    }

    /// A PKCS#10 CSR (DER) for this key. The CA ignores everything in it but the public key, so
    /// it carries no names or extensions.
    pub fn csr_der(&self) -> Result<Vec<u8>, KeyError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&self.pair)
            .map_err(|e| KeyError::Crypto(e.to_string()))?;
        Ok(csr.der().to_vec())
    }

    /// The same CSR as PEM.
    pub fn csr_pem(&self) -> Result<String, KeyError> {
        let der = self.csr_der()?;
        Ok(crate::pem::encode("CERTIFICATE REQUEST", &der))
    }

    /// The key in the form rustls loads.
    pub fn rustls_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pair.serialize_der()))
    }

    /// A rustls signing key for TLS handshakes.
    pub fn signing_key(&self) -> Result<Arc<dyn SigningKey>, KeyError> {
        rustls::crypto::ring::sign::any_supported_type(&self.rustls_der())
            .map_err(|e| KeyError::Crypto(e.to_string()))
    }

    pub(crate) fn pair(&self) -> &KeyPair {
        &self.pair
    }

    pub(crate) fn into_pair(self) -> KeyPair {
        self.pair
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_holds_no_key_material() {
        let key = PrivateKey::generate().unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "PrivateKey([redacted])");
        let pem = key.to_pem();
        let body: String = pem.lines().nth(1).unwrap().chars().take(16).collect();
        assert!(!shown.contains(&body));
    }

    #[test]
    fn pem_round_trip_keeps_the_key() {
        let key = PrivateKey::generate().unwrap();
        let again = PrivateKey::from_pem(&key.to_pem()).unwrap();
        assert_eq!(key.public_key_der(), again.public_key_der());
        assert!(matches!(
            PrivateKey::from_pem("not a key"),
            Err(KeyError::Unreadable)
        ));
    }
}
