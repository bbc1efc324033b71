//! The disk seam, the one for the agent: filesystem capacity (statvfs) and whether a directory
//! is its own mount, behind [`Disk`] so orchestration tests can fake them; plus how many bytes a
//! tree holds (for the backup's space estimate).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Capacity of the filesystem holding a path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    /// Total bytes.
    pub size: u64,
    /// Bytes available to unprivileged users (`f_bavail * f_frsize`).
    pub available: u64,
    /// Bytes free in total (`f_bfree * f_frsize`).
    pub free: u64,
}

impl FsStats {
    /// Bytes in use.
    pub fn used(&self) -> u64 {
        self.size.saturating_sub(self.free)
    }
}

/// Disk queries, behind a trait so orchestration tests can fake them.
pub trait Disk: Send + Sync + std::fmt::Debug {
    /// statvfs of the filesystem `path` is on, or would be created on: a path that does not
    /// exist is measured at its nearest existing ancestor.
    fn stats(&self, path: &Path) -> io::Result<FsStats>;
    /// Whether `path` is the root of its own filesystem (a different device from its parent).
    fn is_mount_point(&self, path: &Path) -> io::Result<bool>;
}

/// The real disk.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealDisk;

impl Disk for RealDisk {
    fn stats(&self, path: &Path) -> io::Result<FsStats> {
        let mut at = path;
        while !at.exists() {
            match at.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                _ => break,
            }
        }
        let s = rustix::fs::statvfs(at)?;
        let frag = s.f_frsize.max(1);
        Ok(FsStats {
            size: s.f_blocks.saturating_mul(frag),
            available: s.f_bavail.saturating_mul(frag),
            free: s.f_bfree.saturating_mul(frag),
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
        assert!(s.size > 0 && s.available <= s.free && s.free <= s.size);
        assert_eq!(s.used(), s.size - s.free);
        // A missing path is measured where it would be created.
        let missing = RealDisk.stats(&d.path().join("no/such/dir")).unwrap();
        assert_eq!(missing.size, s.size);
        assert!(RealDisk.is_mount_point(Path::new("/")).unwrap());
        assert!(!RealDisk.is_mount_point(d.path()).unwrap() || d.path().starts_with("/tmp"));
    }
}
