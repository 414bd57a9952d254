//! Where the lab finds what it runs: the edgeward binaries in the workspace target directory,
//! the Python virtual environment with grpcio, and the gRPC test apps.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::procs;

/// Name of the control plane binary.
pub const CONTROL_BIN: &str = "edgeward-control";
/// Name of the node proxy binary.
pub const PROXY_BIN: &str = "edgeward-proxy";
/// Name of the operator CLI binary.
pub const CTL_BIN: &str = "edgewardctl";

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo target directory: `CARGO_TARGET_DIR` (relative to the workspace root) if set,
/// else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// The folder of the Python gRPC test apps (`tests/apps`).
pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps")
}

/// Paths of the three edgeward binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `edgeward-control`.
    pub control: PathBuf,
    /// `edgeward-proxy`.
    pub proxy: PathBuf,
    /// `edgewardctl`.
    pub ctl: PathBuf,
}

impl Binaries {
    /// Finds the binaries in `EDGEWARD_BIN_DIR` if set (the benchmark points it at a release
    /// build), else the debug builds in the target directory, or says how to build them.
    pub fn locate() -> Result<Binaries> {
        match std::env::var_os("EDGEWARD_BIN_DIR") {
            Some(dir) if !dir.is_empty() => Binaries::locate_in(&workspace_root().join(dir)),
            _ => Binaries::locate_in(&target_dir().join("debug")),
        }
    }

    /// Finds the binaries in `dir`; the error names every missing one and the build command.
    pub fn locate_in(dir: &Path) -> Result<Binaries> {
        let names = [CONTROL_BIN, PROXY_BIN, CTL_BIN];
        let missing: Vec<&str> = names
            .into_iter()
            .filter(|n| !dir.join(n).is_file())
            .collect();
        if !missing.is_empty() {
            bail!(
                "edgeward binaries missing from {}: {}; build them first with \
                 `cargo build --workspace --bins` (tests/run.sh does this)",
                dir.display(),
                missing.join(", ")
            );
        }
        Ok(Binaries {
            control: dir.join(CONTROL_BIN),
            proxy: dir.join(PROXY_BIN),
            ctl: dir.join(CTL_BIN),
        })
    }
}

/// The Python interpreter with grpcio and grpcio-tools: `EDGEWARD_PYTHON` if set, else the
/// virtual environment `<target>/edgeward-pyenv` that `tests/setup.sh` makes.
///
/// Checked once per process: a missing grpcio fails with the fix in the message.
pub fn python() -> Result<PathBuf> {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| check_python().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}\nthe gRPC test peers need Python with grpcio and grpcio-tools: run \
             `bash tests/setup.sh` as root (or point EDGEWARD_PYTHON at such an interpreter)"
            )
        })
}

fn check_python() -> Result<PathBuf> {
    let python = match std::env::var_os("EDGEWARD_PYTHON") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => target_dir().join("edgeward-pyenv/bin/python"),
    };
    if !python.is_file() {
        bail!("no Python interpreter at {}", python.display());
    }
    let mut cmd = Command::new(&python);
    cmd.args(["-c", "import grpc, grpc_tools.protoc"]);
    procs::run_ok(&mut cmd, Duration::from_secs(60))
        .map_err(|e| e.context(format!("grpcio is not importable by {}", python.display())))?;
    Ok(python)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_name_the_build_command() {
        let dir = tempfile::tempdir().unwrap();
        let err = Binaries::locate_in(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cargo build --workspace --bins"), "{err}");
        assert!(
            err.contains("edgeward-control") && err.contains("edgewardctl"),
            "{err}"
        );
    }

    #[test]
    fn apps_are_next_to_the_crate() {
        assert!(apps_dir().join("greeter.proto").is_file());
    }
}
