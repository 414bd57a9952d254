//! The identity material of a running mesh, read from disk the way an operator (or an attacker
//! who stole it) would: the trust bundle, the issuing CA, and a node's own credential. Tests use
//! it to present real, valid certificates that are nonetheless wrong for where they are used.

use std::time::SystemTime;

use anyhow::{Context, Result};
use edgeward_ca::{pem, Authority, PrivateKey, SharedBundle, SpiffeId, Svid, TrustBundle};
use edgeward_ca::{TrustDomain, DEFAULT_SVID_LIFETIME};

use crate::mesh::Mesh;

/// The mesh's trust domain.
pub fn trust_domain(mesh: &Mesh) -> Result<TrustDomain> {
    Ok(TrustDomain::parse(&mesh.options().trust_domain)?)
}

/// The mesh's trust bundle, as the control plane wrote it (`<data dir>/bundle.pem`).
pub fn bundle(mesh: &Mesh) -> Result<SharedBundle> {
    let path = mesh.control_data_dir().join("bundle.pem");
    let bundle = TrustBundle::load(trust_domain(mesh)?, &path)?;
    Ok(SharedBundle::new(bundle))
}

/// The mesh's own issuing CA, from the control plane's `ca/` directory.
pub fn authority(mesh: &Mesh) -> Result<Authority> {
    let ca = mesh.control_data_dir().join("ca");
    let read = |name: &str| {
        std::fs::read_to_string(ca.join(name)).with_context(|| format!("reading ca/{name}"))
    };
    let intermediate = pem::decode_certs(&read("intermediate.crt")?)?
        .into_iter()
        .next()
        .context("ca/intermediate.crt holds no certificate")?;
    let key = PrivateKey::from_pem(&read("intermediate.key")?)?;
    let td = trust_domain(mesh)?;
    let roots = TrustBundle::from_pem(td.clone(), &read("root.crt")?)?;
    Ok(Authority::new(td, intermediate, key, vec![], roots)?)
}

/// A fresh key and an SVID for `id` from `authority`, valid now for the default lifetime.
pub fn issue(authority: &Authority, id: &SpiffeId) -> Result<Svid> {
    let key = PrivateKey::generate()?;
    let csr = key.csr_der()?;
    let issued = authority.issue(&csr, id, DEFAULT_SVID_LIFETIME, SystemTime::now())?;
    Ok(Svid::new(id.clone(), issued.chain, key)?)
}

/// Node `k`'s own credential (`node.pem`: key and chain), from its proxy's state directory.
pub fn node_credential(mesh: &Mesh, k: usize) -> Result<Svid> {
    let dir = mesh.proxy_state_dir(k);
    Svid::load_combined(&dir.join("node.pem"))
        .with_context(|| format!("loading node-{k}'s credential from {}", dir.display()))
}
