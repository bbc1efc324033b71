//! The host root: every host path the agent touches is taken relative to it (`/` on a node,
//! a temp dir in tests), plus crash-safe file writes (temp file, fsync, rename, fsync dir).

use std::fs;
use std::io::{self, Write};
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
