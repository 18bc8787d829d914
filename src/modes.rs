//! File modes of what corral keeps on disk: every directory it owns is 0700 and every file
//! in it 0600. The data directory holds the database (password and token digests, guests'
//! init secrets), the admin token and the Redis secret; the disk-image directory holds
//! guests' disks and first-boot seeds (password hashes, SSH keys). No other local user may
//! read any of them.
//!
//! New files are created with their mode ([`create_private`]); files made by other
//! programs (`qemu-img`, `genisoimage`) are narrowed right after ([`make_private`]). At
//! start the controller and the node narrow what an older installation left wider
//! ([`tighten`]), and log each change. QEMU runs as root (as `deploy/quickstart.sh` sets
//! up libvirt), so 0700 directories keep it out of nothing it needs.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of corral's directories.
pub const DIR: u32 = 0o700;
/// The mode of corral's files.
pub const FILE: u32 = 0o600;

/// One mode narrowed at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Narrowed {
    pub path: PathBuf,
    pub from: u32,
    pub to: u32,
}

/// Creates `dir` (and its parents) 0700 when missing.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR)
        .create(dir)
}

/// Opens a new file for writing, created 0600 (truncated if it exists).
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE)
        .open(path)?;
    // An existing file keeps its old mode through `open`: narrow it too.
    f.set_permissions(std::fs::Permissions::from_mode(FILE))?;
    Ok(f)
}

/// Writes `bytes` to a new file created 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    create_private(path)?.write_all(bytes)
}

/// Narrows a file another program wrote to 0600.
pub fn make_private(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE))
}

/// Creates `dir` 0700 if missing; otherwise narrows it to 0700, and every file and
/// directory under it that group or others may use to 0600 or 0700. What was changed
/// is returned (and logged by the caller). Symbolic links are left alone: they are not
/// corral's.
pub fn tighten(dir: &Path) -> std::io::Result<Vec<Narrowed>> {
    private_dir(dir)?;
    let mut changed = Vec::new();
    narrow(dir, DIR, &mut changed)?;
    walk(dir, &mut changed)?;
    Ok(changed)
}

fn walk(dir: &Path, changed: &mut Vec<Narrowed>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            narrow(&entry.path(), DIR, changed)?;
            walk(&entry.path(), changed)?;
        } else if kind.is_file() {
            narrow(&entry.path(), FILE, changed)?;
        }
    }
    Ok(())
}

fn narrow(path: &Path, to: u32, changed: &mut Vec<Narrowed>) -> std::io::Result<()> {
    let from = std::fs::symlink_metadata(path)?.permissions().mode() & 0o7777;
    // Only ever narrower: bits corral's modes do not have are removed, none are added.
    if from & !to != 0 {
        let new = from & to;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(new))?;
        changed.push(Narrowed {
            path: path.to_path_buf(),
            from,
            to: new,
        });
    }
    Ok(())
}

/// [`tighten`], logging each change (and a failure, which does not stop a start).
pub fn tighten_logged(dir: &Path) {
    match tighten(dir) {
        Ok(changed) => {
            for n in changed {
                tracing::warn!(
                    path = %n.path.display(),
                    "narrowed the mode from {:04o} to {:04o}: only corral's user may read it",
                    n.from,
                    n.to
                );
            }
        }
        Err(e) => tracing::warn!(dir = %dir.display(), "narrowing file modes: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn an_old_installation_is_narrowed_and_each_change_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let seed = dir.join("g-seed.iso");
        std::fs::write(&seed, b"x").unwrap();
        std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o644)).unwrap();
        let sub = dir.join("images");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o711)).unwrap();
        let ok = dir.join("already.qcow2");
        write_private(&ok, b"y").unwrap();

        let changed = tighten(&dir).unwrap();
        let mut paths: Vec<(PathBuf, u32, u32)> = changed
            .into_iter()
            .map(|n| (n.path, n.from, n.to))
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            vec![
                (dir.clone(), 0o755, 0o700),
                (seed.clone(), 0o644, 0o600),
                (sub.clone(), 0o711, 0o700),
            ]
        );
        assert_eq!(
            (mode(&dir), mode(&seed), mode(&sub), mode(&ok)),
            (0o700, 0o600, 0o700, 0o600)
        );
        assert_eq!(
            tighten(&dir).unwrap(),
            vec![],
            "a second start changes nothing"
        );
        let fresh = tmp.path().join("new/deeper");
        tighten(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }

    #[test]
    fn create_private_narrows_an_existing_file() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, b"old").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&f, b"new").unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(std::fs::read(&f).unwrap(), b"new");
    }
}
