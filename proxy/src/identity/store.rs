//! Workload keys and certificates in the state directory (`workloads/<namespace>_<name>.pem`,
//! 0600, key and chain in one file), so a proxy restarted while the control plane is away
//! serves at once. Each file is written atomically, key and certificate together; a file that
//! does not load is reported and ignored, and the workload gets a fresh SVID from the control
//! plane.

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

    fn path(&self, key: &WorkloadKey) -> PathBuf {
        // Names are DNS labels, so '_' cannot occur in them and the pair is unambiguous.
        self.dir.join(format!("{}_{}.pem", key.namespace, key.name))
    }

    /// The saved SVID of `key`, if it loads, is for `id` and has not expired.
    pub fn load(&self, key: &WorkloadKey, id: &SpiffeId) -> Option<Svid> {
        let path = self.path(key);
        if !path.exists() {
            return None;
        }
        match Svid::load_combined(&path) {
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
        if let Err(error) = svid.save_combined(&self.path(key)) {
            tracing::warn!(workload = %key, %error, "cannot save the workload SVID");
        }
    }

    /// Deletes the files of a workload that left the node.
    pub fn remove(&self, key: &WorkloadKey) {
        let _ = std::fs::remove_file(self.path(key));
    }
}
