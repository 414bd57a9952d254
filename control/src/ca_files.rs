//! The CA material and credentials the control plane keeps in its data directory.
//!
//! Layout: `ca/root.crt`, `ca/root.key`, `ca/intermediate.crt`, `ca/intermediate.key` (keys
//! 0600), `bundle.pem` (the roots proxies trust), and `admin/` with the operator credential
//! (`admin.crt`, `admin.key`, `bundle.pem`). An operator who brings their own hierarchy puts
//! their PEM files at these paths before the first start.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use edgeward_ca::pem;
use edgeward_ca::TrustDomain;
use edgeward_ca::{files, Authority, GeneratedHierarchy, PrivateKey, SpiffeId, Svid, TrustBundle};

/// Lifetime of the operator credential: 90 days (renewed at start when less than 30 remain).
pub const ADMIN_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

const ADMIN_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Paths inside the data directory.
#[derive(Debug, Clone)]
pub struct DataDir(PathBuf);

impl DataDir {
    /// Wraps the data directory path.
    pub fn new(path: &Path) -> Self {
        Self(path.to_owned())
    }

    fn ca(&self, file: &str) -> PathBuf {
        self.0.join("ca").join(file)
    }

    /// The trust bundle file that proxies take as their bootstrap bundle.
    pub fn bundle(&self) -> PathBuf {
        self.0.join("bundle.pem")
    }

    /// The operator credential directory.
    pub fn admin_dir(&self) -> PathBuf {
        self.0.join("admin")
    }

    /// The state file.
    pub fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
}

/// Loads the CA from the data directory, generating a root and an intermediate on first start.
pub fn load_or_create_authority(dir: &DataDir, td: &TrustDomain) -> Result<Authority> {
    files::create_private_dir(&dir.0.join("ca")).context("cannot create the CA directory")?;
    if !dir.ca("intermediate.crt").exists() {
        generate(dir, td)?;
    }
    load(dir, td)
}

fn generate(dir: &DataDir, td: &TrustDomain) -> Result<()> {
    tracing::info!(trust_domain = %td, "generating a new root and intermediate CA");
    let h = GeneratedHierarchy::generate(td, SystemTime::now())?;
    files::write_secret(&dir.ca("root.key"), h.root_key.to_pem().as_bytes())?;
    files::write_public(
        &dir.ca("root.crt"),
        pem::encode("CERTIFICATE", &h.root_cert).as_bytes(),
    )?;
    files::write_secret(
        &dir.ca("intermediate.key"),
        h.intermediate_key.to_pem().as_bytes(),
    )?;
    // Written last: its presence says the hierarchy is complete.
    let intermediate = pem::encode("CERTIFICATE", &h.intermediate_cert);
    files::write_public(&dir.ca("intermediate.crt"), intermediate.as_bytes())?;
    Ok(())
}

fn load(dir: &DataDir, td: &TrustDomain) -> Result<Authority> {
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let issuer_chain =
        pem::decode_certs(&read(dir.ca("intermediate.crt"))?).context("ca/intermediate.crt")?;
    let key =
        PrivateKey::from_pem(&read(dir.ca("intermediate.key"))?).context("ca/intermediate.key")?;
    let roots = pem::decode_certs(&read(dir.ca("root.crt"))?).context("ca/root.crt")?;
    let bundle = TrustBundle::new(td.clone(), roots).context("ca/root.crt")?;

    let mut chain = issuer_chain.into_iter();
    let issuer = chain
        .next()
        .context("ca/intermediate.crt holds no certificate")?;
    let authority = Authority::new(td.clone(), issuer, key, chain.collect(), bundle)
        .context("the CA in ca/ is unusable")?;
    if authority.issuer_not_after() <= SystemTime::now() {
        bail!("the intermediate CA in ca/intermediate.crt has expired; replace it");
    }
    authority.bundle().save(&dir.bundle())?;
    Ok(authority)
}

/// Generates a key and has `authority` sign an SVID for it, for the control plane's own use.
pub fn issue_local(authority: &Authority, id: &SpiffeId, lifetime: Duration) -> Result<Svid> {
    let key = PrivateKey::generate()?;
    let issued = authority.issue(&key.csr_der()?, id, lifetime, SystemTime::now())?;
    Ok(Svid::new(id.clone(), issued.chain, key)?)
}

/// Creates the operator credential on first start, and renews it when it nears expiry.
pub fn ensure_admin_credential(dir: &DataDir, authority: &Authority) -> Result<()> {
    let admin = dir.admin_dir();
    files::create_private_dir(&admin)?;
    let (cert, key) = (admin.join("admin.crt"), admin.join("admin.key"));
    // The key and the certificate are two files (operators' tools expect that), so a crash
    // between their writes can leave a mismatched pair: anything that does not load as a pair
    // is issued again.
    let fresh = Svid::load(&cert, &key)
        .is_ok_and(|svid| svid.not_after() > SystemTime::now() + ADMIN_RENEW_BEFORE);
    if !fresh {
        let id = authority.trust_domain().admin_id();
        issue_local(authority, &id, ADMIN_LIFETIME)?.save(&cert, &key)?;
        tracing::info!(path = %admin.display(), "wrote the operator credential");
    }
    authority.bundle().save(&admin.join("bundle.pem"))?;
    Ok(())
}
