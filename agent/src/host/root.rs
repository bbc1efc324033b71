//! The host root: every host path the agent touches is taken relative to it (`/` on a node,
//! a temp dir in tests), and tree removal. Crash-safe writes are
//! [`talm_shared::fsutil::atomic_write`].

use std::fs;
use std::io;
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
}
