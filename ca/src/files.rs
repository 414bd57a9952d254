//! Atomic file writes: a reader or a crash never sees a half-written key, certificate or bundle.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// File mode for private keys, tokens and anything else secret.
pub const SECRET_MODE: u32 = 0o600;

/// File mode for certificates and bundles.
pub const PUBLIC_MODE: u32 = 0o644;

/// Writes a secret (key, token) atomically with mode 0600.
pub fn write_secret(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomic(path, contents, SECRET_MODE)
}

/// Writes public material (certificate, bundle, state) atomically with mode 0644.
pub fn write_public(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomic(path, contents, PUBLIC_MODE)
}

/// Writes to a temporary file in the same directory, syncs it, renames it over `path` and syncs
/// the directory, so that after a crash `path` holds either the old or the new contents.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let prefix = format!(".{}.tmp", name.to_string_lossy());
    let tmp = dir.join(format!("{prefix}{}", std::process::id()));
    remove_stale_temporaries(dir, &prefix, &tmp);

    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    // The mode given to open() is masked by the umask; set it exactly.
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);

    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Removes temporary files that an earlier process, killed mid-write, left beside the target.
fn remove_stale_temporaries(dir: &Path, prefix: &str, ours: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(prefix);
        if stale && entry.path() != ours {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Creates a directory (and its parents) that only the owner may enter.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_are_0600_and_replace_old_contents() {
        let dir = std::env::temp_dir().join(format!("ew-files-{}", std::process::id()));
        create_private_dir(&dir).unwrap();
        let path = dir.join("key.pem");
        fs::write(dir.join(".key.pem.tmp1"), b"left by a killed writer").unwrap();
        write_secret(&path, b"one").unwrap();
        write_secret(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SECRET_MODE);
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }
}
