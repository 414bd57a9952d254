//! Workload keys and certificates in the state directory (`workloads/<namespace>_<name>.key`,
//! 0600, and `.crt`), so a proxy restarted while the control plane is away serves at once.
//! Each file is written atomically; a file that does not load is reported and ignored, and the
//! workload gets a fresh SVID from the control plane.

use std::path::{Path, PathBuf};

use edgeward_ca::{SpiffeId, Svid};

use crate::directory::WorkloadKey;

/// The `workloads/` directory of the state directory.
#[derive(Debug, Clone)]
pub struct WorkloadFiles {
    dir: PathBuf,
}

impl WorkloadFiles {
    /// Files under `<state dir>/workloads`, creating it (0700) if needed.
    pub fn new(state_dir: &Path) -> std::io::Result<Self> {
        let dir = state_dir.join("workloads");
        edgeward_ca::files::create_private_dir(&dir)?;
        Ok(Self { dir })
    }

    fn paths(&self, key: &WorkloadKey) -> (PathBuf, PathBuf) {
        // Names are DNS labels, so '_' cannot occur in them and the pair is unambiguous.
        let stem = format!("{}_{}", key.namespace, key.name);
        (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        )
    }

    /// The saved SVID of `key`, if it loads, is for `id` and has not expired.
    pub fn load(&self, key: &WorkloadKey, id: &SpiffeId) -> Option<Svid> {
        let (cert, private_key) = self.paths(key);
        if !cert.exists() {
            return None;
        }
        match Svid::load(&cert, &private_key) {
            Ok(svid) if svid.id() != id => {
                tracing::info!(workload = %key, "the saved SVID is for another identity; ignored");
                None
            }
            Ok(svid) if svid.not_after() <= std::time::SystemTime::now() => None,
            Ok(svid) => Some(svid),
            Err(error) => {
                tracing::warn!(workload = %key, %error, "the saved SVID does not load; ignored");
                None
            }
        }
    }

    /// Saves the SVID of `key`; a failure is logged, as the SVID in memory still serves.
    pub fn save(&self, key: &WorkloadKey, svid: &Svid) {
        let (cert, private_key) = self.paths(key);
        if let Err(error) = svid.save(&cert, &private_key) {
            tracing::warn!(workload = %key, %error, "cannot save the workload SVID");
        }
    }

    /// Deletes the files of a workload that left the node.
    pub fn remove(&self, key: &WorkloadKey) {
        let (cert, private_key) = self.paths(key);
        let _ = std::fs::remove_file(cert);
        let _ = std::fs::remove_file(private_key);
    }
}
