//! Disk facts: free space (statvfs), whether a directory is its own mount, and how many bytes
//! a tree holds (for the backup's space estimate).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Filesystem capacity of the filesystem holding a path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    /// Total bytes.
    pub size: u64,
    /// Bytes available to unprivileged users (`f_bavail * f_frsize`).
    pub available: u64,
}

/// Disk queries, behind a trait so orchestration tests can fake them.
pub trait Disk: Send + Sync + std::fmt::Debug {
    /// statvfs of `path`.
    fn stats(&self, path: &Path) -> io::Result<FsStats>;
    /// Whether `path` is the root of its own filesystem (a different device from its parent).
    fn is_mount_point(&self, path: &Path) -> io::Result<bool>;
}

/// The real disk.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealDisk;

impl Disk for RealDisk {
    fn stats(&self, path: &Path) -> io::Result<FsStats> {
        let s = rustix::fs::statvfs(path)?;
        Ok(FsStats {
            size: s.f_blocks.saturating_mul(s.f_frsize),
            available: s.f_bavail.saturating_mul(s.f_frsize),
        })
    }

    fn is_mount_point(&self, path: &Path) -> io::Result<bool> {
        let me = std::fs::metadata(path)?;
        let parent = std::fs::metadata(path.join(".."))?;
        Ok(me.dev() != parent.dev() || me.ino() == parent.ino())
    }
}

/// Bytes allocated by the regular files under `path` (symlinks not followed; a missing path
/// counts 0; unreadable entries are skipped). `skip` names top-level entries to leave out.
pub fn tree_size(path: &Path, skip: &[&str]) -> u64 {
    fn walk(p: &Path, top: bool, skip: &[&str]) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if m.is_file() {
            return m.blocks().saturating_mul(512).min(m.len().max(4096));
        }
        if !m.is_dir() {
            return 0;
        }
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        rd.flatten()
            .filter(|e| !(top && skip.iter().any(|s| e.file_name() == **s)))
            .map(|e| walk(&e.path(), false, skip))
            .sum()
    }
    walk(path, true, skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_sizes_of_a_temp_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), vec![1u8; 10_000]).unwrap();
        std::fs::create_dir(d.path().join("bin")).unwrap();
        std::fs::write(d.path().join("bin/b"), vec![1u8; 10_000]).unwrap();
        let all = tree_size(d.path(), &[]);
        let some = tree_size(d.path(), &["bin"]);
        assert!(all > some && some >= 10_000, "{all} {some}");
        let s = RealDisk.stats(d.path()).unwrap();
        assert!(s.size > 0 && s.available <= s.size);
        assert!(RealDisk.is_mount_point(Path::new("/")).unwrap());
        assert!(!RealDisk.is_mount_point(d.path()).unwrap() || d.path().starts_with("/tmp"));
    }
}
