//! PEM encoding and decoding of certificates, CSRs and keys.

use rustls_pki_types::CertificateDer;
use thiserror::Error;

/// Why PEM text could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PemError {
    /// The text is not PEM at all.
    #[error("not valid PEM: {0}")]
    Malformed(String),
    /// The text is PEM but holds no block of the wanted kind.
    #[error("no {0} block found")]
    Missing(&'static str),
}

/// Encodes one DER object as a PEM block with the given tag.
pub fn encode(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der))
}

/// Encodes certificates as consecutive `CERTIFICATE` blocks.
pub fn encode_certs(certs: &[CertificateDer<'_>]) -> String {
    certs.iter().map(|c| encode("CERTIFICATE", c)).collect()
}

/// Decodes every `CERTIFICATE` block, in order; other blocks are refused.
pub fn decode_certs(text: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let blocks = decode_all(text, "CERTIFICATE")?;
    Ok(blocks.into_iter().map(CertificateDer::from).collect())
}

/// Splits a file holding one `PRIVATE KEY` block and one or more `CERTIFICATE` blocks (in any
/// order) into the key, re-encoded as PEM, and the certificates.
pub fn split_key_and_certs(text: &str) -> Result<(String, Vec<CertificateDer<'static>>), PemError> {
    let blocks = pem::parse_many(text).map_err(|e| PemError::Malformed(e.to_string()))?;
    let (mut keys, mut certs) = (Vec::new(), Vec::new());
    for block in blocks {
        match block.tag() {
            "PRIVATE KEY" => keys.push(pem::encode(&block)),
            "CERTIFICATE" => certs.push(CertificateDer::from(block.into_contents())),
            other => {
                let what = format!("found a {other} block beside the key and certificates");
                return Err(PemError::Malformed(what));
            }
        }
    }
    match (keys.len(), certs.is_empty()) {
        (0, _) => Err(PemError::Missing("PRIVATE KEY")),
        (_, true) => Err(PemError::Missing("CERTIFICATE")),
        (1, false) => Ok((keys.remove(0), certs)),
        (n, _) => Err(PemError::Malformed(format!("{n} private keys in one file"))),
    }
}

/// Decodes the single block with the given tag.
pub fn decode_one(text: &str, tag: &'static str) -> Result<Vec<u8>, PemError> {
    let mut blocks = decode_all(text, tag)?;
    match blocks.len() {
        1 => Ok(blocks.remove(0)),
        n => Err(PemError::Malformed(format!(
            "expected one {tag} block, found {n}"
        ))),
    }
}

fn decode_all(text: &str, tag: &'static str) -> Result<Vec<Vec<u8>>, PemError> {
    let blocks = pem::parse_many(text).map_err(|e| PemError::Malformed(e.to_string()))?;
    if blocks.is_empty() {
        return Err(PemError::Missing(tag));
    }
    blocks
        .into_iter()
        .map(|b| match b.tag() == tag {
            true => Ok(b.into_contents()),
            false => Err(PemError::Malformed(format!(
                "found a {} block where only {tag} blocks belong",
                b.tag()
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_problems() {
        let certs = vec![
            CertificateDer::from(vec![1u8, 2, 3]),
            CertificateDer::from(vec![4u8]),
        ];
        let text = encode_certs(&certs);
        assert_eq!(decode_certs(&text).unwrap(), certs);
        assert_eq!(decode_certs(""), Err(PemError::Missing("CERTIFICATE")));
        assert!(matches!(
            decode_certs(&encode("PRIVATE KEY", &[1])),
            Err(PemError::Malformed(_))
        ));
        assert!(matches!(
            decode_one(&text, "CERTIFICATE"),
            Err(PemError::Malformed(_))
        ));
    }
}
