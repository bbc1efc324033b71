//! The host root: every host path the agent touches is taken relative to it (`/` on a node,
//! a temp dir in tests); the rule for directories a restore writes into or deletes from
//! (reached from the root without following a link); plus crash-safe file writes (temp file,
//! fsync, rename, fsync dir).

use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

/// The node's `/` as the agent sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRoot(PathBuf);

impl HostRoot {
    /// A host rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self(root.into())
    }

    /// The root itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `p` (a host path such as `/etc/kubernetes`) under the root. `..` components are dropped,
    /// so the result never leaves the root lexically.
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        let mut out = self.0.clone();
        for c in p.as_ref().components() {
            if let Component::Normal(n) = c {
                out.push(n);
            }
        }
        out
    }

    /// `p` (a host path) under the root, checked with [`check_dir_beneath`]: every component
    /// that exists is a real directory, reached without following a link. For the directories
    /// a restore writes into or deletes from.
    pub fn resolve_dir(&self, p: impl AsRef<Path>) -> Result<PathBuf, InRootError> {
        let path = self.join(p);
        check_dir_beneath(&self.0, &path)?;
        Ok(path)
    }
}

/// Why a directory cannot be written into or deleted from.
#[derive(Debug, thiserror::Error)]
pub enum InRootError {
    /// A component is a symbolic link.
    #[error(
        "{} is a symlink on disk (to {}); nothing is written or deleted through a link",
        path.display(),
        target.display()
    )]
    Symlink {
        /// The link.
        path: PathBuf,
        /// What it points to.
        target: PathBuf,
    },
    /// A component exists but is not a directory.
    #[error("{} is not a directory", path.display())]
    NotDir {
        /// The component.
        path: PathBuf,
    },
    /// The path is not below the base, or climbs out with `..`.
    #[error("{} is not inside {}", path.display(), base.display())]
    Outside {
        /// The path.
        path: PathBuf,
        /// The base.
        base: PathBuf,
    },
    /// The walk failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The component.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl InRootError {
    /// The path at fault.
    pub fn path(&self) -> &Path {
        match self {
            InRootError::Symlink { path, .. }
            | InRootError::NotDir { path }
            | InRootError::Outside { path, .. }
            | InRootError::Io { path, .. } => path,
        }
    }
}

/// The one rule for a directory that a restore writes into or deletes from: walked from `base`
/// (trusted: the host root or a checked destination) one component at a time, each opened
/// relative to the previous one with `O_NOFOLLOW`, so no link is followed on the way. Every
/// component that exists must be a real directory; the first missing one ends the walk (it and
/// what is below would be created as directories).
pub fn check_dir_beneath(base: &Path, dir: &Path) -> Result<(), InRootError> {
    use rustix::fs::{Mode, OFlags};
    let outside = || InRootError::Outside {
        path: dir.to_owned(),
        base: base.to_owned(),
    };
    let rel = dir.strip_prefix(base).map_err(|_| outside())?;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut fd = match rustix::fs::open(base, flags, Mode::empty()) {
        Ok(fd) => fd,
        // Nothing there to be a link: all of it would be created.
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => {
            return Err(InRootError::Io {
                path: base.to_owned(),
                source: e.into(),
            });
        }
    };
    let mut cur = base.to_owned();
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(outside());
        };
        cur.push(name);
        match rustix::fs::openat(&fd, name, flags | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(next) => fd = next,
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR => {
                return Err(match rustix::fs::readlinkat(&fd, name, Vec::new()) {
                    Ok(target) => InRootError::Symlink {
                        path: cur,
                        target: PathBuf::from(std::ffi::OsString::from_vec(target.into_bytes())),
                    },
                    Err(_) => InRootError::NotDir { path: cur },
                });
            }
            Err(e) => {
                return Err(InRootError::Io {
                    path: cur,
                    source: e.into(),
                });
            }
        }
    }
    Ok(())
}

/// fsyncs a directory (so a rename or a new entry in it is durable).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Writes `data` to `path` atomically: a temp file beside it, fsync, rename, fsync the parent.
/// A crash leaves either the old content or the new one, never a mix.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let parent = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{}: no parent directory", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{}: no file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = parent.join(tmp_name);
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fsync_dir(parent)
}

/// Removes a file or a tree. A missing path is fine.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_reached_only_through_real_directories() {
        let d = tempfile::tempdir().unwrap();
        let root = HostRoot::new(d.path());
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("var/lib/kubelet")).unwrap();
        fs::write(d.path().join("var/file"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("lib", d.path().join("var/lnk")).unwrap();

        assert_eq!(
            root.resolve_dir("/var/lib/kubelet").unwrap(),
            d.path().join("var/lib/kubelet")
        );
        // Missing components would be created: fine.
        assert!(root.resolve_dir("/var/lib/new/deeper").is_ok());
        assert!(root.resolve_dir("/").is_ok());
        let e = root.resolve_dir("/etc/kubernetes").unwrap_err();
        assert!(
            matches!(&e, InRootError::Symlink { path, target }
                if *path == d.path().join("etc") && target == outside.path()),
            "{e}"
        );
        assert!(e.to_string().contains("symlink on disk"), "{e}");
        // A relative link that stays inside is refused all the same.
        let e = root.resolve_dir("/var/lnk").unwrap_err();
        assert_eq!(e.path(), d.path().join("var/lnk"));
        let e = root.resolve_dir("/var/file/x").unwrap_err();
        assert!(matches!(e, InRootError::NotDir { .. }), "{e}");
        let e = check_dir_beneath(d.path(), outside.path()).unwrap_err();
        assert!(matches!(e, InRootError::Outside { .. }), "{e}");
        let e = check_dir_beneath(d.path(), &d.path().join("var/../etc")).unwrap_err();
        assert!(matches!(e, InRootError::Outside { .. }), "{e}");
    }

    #[test]
    fn join_stays_under_the_root() {
        let r = HostRoot::new("/tmp/h");
        assert_eq!(
            r.join("/etc/kubernetes"),
            Path::new("/tmp/h/etc/kubernetes")
        );
        assert_eq!(r.join("../../etc/../x"), Path::new("/tmp/h/etc/x"));
    }

    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
