//! The host root: every host path the agent touches is taken relative to it (`/` on a node,
//! a temp dir in tests); the two rules for directories a restore writes into or deletes from
//! ([`resolve_in_root`]: a host path resolved as the host resolves it, links followed but
//! never out of the root; [`check_dir_beneath`]: a path below a trusted directory, reached
//! without following any link); and tree removal. Crash-safe writes are
//! [`talm_shared::fsutil::atomic_write`].

use std::ffi::OsString;
use std::fs;
use std::io;
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

    /// Whether the root is this machine's `/` (as given, or through links), so that commands
    /// the agent runs act on the same host as its file operations. A root that cannot be
    /// resolved is not.
    pub fn is_slash(&self) -> bool {
        fs::canonicalize(&self.0).is_ok_and(|p| p == Path::new("/"))
    }

    /// `p` (a host path, a directory) resolved inside the root as the host resolves it
    /// ([`resolve_in_root`]): `/usr/local` is `<root>/var/usrlocal` on RHCOS. For the
    /// directories a backup reads and a restore writes into or deletes from.
    pub fn resolve_dir(&self, p: impl AsRef<Path>) -> Result<PathBuf, InRootError> {
        resolve_in_root(&self.0, p.as_ref())
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
    /// A symbolic link on the way points to nothing inside the root.
    #[error(
        "{} is a symlink to {}, which does not exist inside the host root ({} is missing); nothing is created where a link points",
        link.display(),
        target.display(),
        resolved.display()
    )]
    Dangling {
        /// The link.
        link: PathBuf,
        /// What it points to.
        target: PathBuf,
        /// The first missing component of where it leads, inside the root.
        resolved: PathBuf,
    },
    /// Too many links were followed (a loop).
    #[error("{}: too many levels of symbolic links (more than {MAX_LINKS})", path.display())]
    Loop {
        /// The link that was one too many.
        path: PathBuf,
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
            | InRootError::Loop { path }
            | InRootError::Dangling { link: path, .. }
            | InRootError::NotDir { path }
            | InRootError::Outside { path, .. }
            | InRootError::Io { path, .. } => path,
        }
    }
}

/// The rule for a directory below a trusted one (a resolved destination) that a restore
/// writes into or deletes from, such as the parent of an archive entry: walked from `base` one
/// component at a time, each opened relative to the previous one with `O_NOFOLLOW`, so no link
/// is followed on the way. Every component that exists must be a real directory; the first
/// missing one ends the walk (it and what is below would be created as directories).
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

/// How many symbolic links one resolution may follow (the kernel's `MAXSYMLINKS`).
pub const MAX_LINKS: usize = 40;

/// One step of a walk in [`resolve_in_root`].
enum Walk {
    /// Back to the root (an absolute link target).
    Root,
    /// `..`.
    Up,
    /// A name, and the link (index in the followed links) whose target it comes from.
    Name(OsString, Option<usize>),
}

/// `dir` (a host path such as `/usr/local`) resolved inside `root` the way the host itself
/// resolves it, with the semantics of `openat2(RESOLVE_IN_ROOT)`: one component at a time,
/// each opened relative to the previous one without following a link implicitly; a symlink
/// on the way is read and its target walked in its place, an absolute target from `root` and
/// `..` never above `root`, so the result is always inside `root` (on an RHCOS node,
/// `/usr/local -> ../var/usrlocal` gives `<root>/var/usrlocal`). Returns `<root>/<resolved>`,
/// whose existing components are all real directories.
///
/// Components missing at the end of `dir` itself are fine (a restore creates them as
/// directories), but not a missing link target ([`InRootError::Dangling`]): nothing is created
/// where a link points (a `/var` that is not mounted, a link meant for another root). Also
/// refused: a component that is not a directory, more than [`MAX_LINKS`] links (a loop), `..`
/// out of a missing directory.
pub fn resolve_in_root(root: &Path, dir: &Path) -> Result<PathBuf, InRootError> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let io_err = |path: PathBuf, e: rustix::io::Errno| InRootError::Io {
        path,
        source: e.into(),
    };
    let here = |names: &[OsString]| {
        let mut p = root.to_owned();
        p.extend(names);
        p
    };
    // The resolved components below the root; `fds[i]` is the directory `names[..i]` (so
    // `fds[0]` is the root itself); names past `fds.len() - 1` do not exist.
    let mut names: Vec<OsString> = Vec::new();
    let mut fds = Vec::new();
    match rustix::fs::open(root, flags, Mode::empty()) {
        Ok(fd) => fds.push(fd),
        // Nothing there: all of it would be created.
        Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(io_err(root.to_owned(), e)),
    }
    // The links followed: (link, target).
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    // What is left to walk, the next step last.
    let mut todo: Vec<Walk> = Vec::new();
    let push = |todo: &mut Vec<Walk>, p: &Path, from: Option<usize>| {
        for c in p.components().rev() {
            todo.push(match c {
                Component::Normal(n) => Walk::Name(n.to_owned(), from),
                Component::ParentDir => Walk::Up,
                Component::RootDir => Walk::Root,
                Component::CurDir | Component::Prefix(_) => continue,
            });
        }
    };
    push(&mut todo, dir, None);
    while let Some(step) = todo.pop() {
        let (name, from) = match step {
            Walk::Root => {
                names.clear();
                fds.truncate(1);
                continue;
            }
            Walk::Up => {
                if fds.len() < names.len() + 1 {
                    // Back out of a directory that does not exist: an error, as for the kernel.
                    return Err(io_err(here(&names), rustix::io::Errno::NOENT));
                }
                // Never above the root.
                if names.pop().is_some() {
                    fds.pop();
                }
                continue;
            }
            Walk::Name(name, from) => (name, from),
        };
        // A missing component: fine at the end of `dir`, not in a link's target.
        let missing = |names: &[OsString]| match from.and_then(|i| links.get(i)) {
            Some((link, target)) => Err(InRootError::Dangling {
                link: link.clone(),
                target: target.clone(),
                resolved: here(names),
            }),
            None => Ok(()),
        };
        let Some(fd) = fds.get(names.len()) else {
            // Below a missing directory.
            names.push(name);
            missing(&names)?;
            continue;
        };
        let st = match rustix::fs::statat(fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => {
                names.push(name);
                missing(&names)?;
                continue;
            }
            Err(e) => {
                names.push(name);
                return Err(io_err(here(&names), e));
            }
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let next = rustix::fs::openat(fd, &name, flags | OFlags::NOFOLLOW, Mode::empty());
                names.push(name);
                let next = next.map_err(|e| io_err(here(&names), e))?;
                fds.push(next);
            }
            FileType::Symlink => {
                let path = here(&names).join(&name);
                if links.len() >= MAX_LINKS {
                    return Err(InRootError::Loop { path });
                }
                let target = rustix::fs::readlinkat(fd, &name, Vec::new())
                    .map_err(|e| io_err(path.clone(), e))?;
                let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                if target.as_os_str().is_empty() {
                    return Err(InRootError::Dangling {
                        link: path,
                        target,
                        resolved: here(&names),
                    });
                }
                push(&mut todo, &target, Some(links.len()));
                links.push((path, target));
            }
            _ => {
                names.push(name);
                return Err(InRootError::NotDir { path: here(&names) });
            }
        }
    }
    Ok(here(&names))
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
    fn below_a_trusted_directory_no_link_is_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("var/lib/kubelet")).unwrap();
        fs::write(d.path().join("var/file"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("lib", d.path().join("var/lnk")).unwrap();
        let base = d.path();

        assert!(check_dir_beneath(base, &base.join("var/lib/kubelet")).is_ok());
        // Missing components would be created: fine.
        assert!(check_dir_beneath(base, &base.join("var/lib/new/deeper")).is_ok());
        assert!(check_dir_beneath(base, base).is_ok());
        let e = check_dir_beneath(base, &base.join("etc/kubernetes")).unwrap_err();
        assert!(
            matches!(&e, InRootError::Symlink { path, target }
                if *path == base.join("etc") && target == outside.path()),
            "{e}"
        );
        assert!(e.to_string().contains("symlink on disk"), "{e}");
        // A relative link that stays inside is refused all the same.
        let e = check_dir_beneath(base, &base.join("var/lnk")).unwrap_err();
        assert_eq!(e.path(), base.join("var/lnk"));
        let e = check_dir_beneath(base, &base.join("var/file/x")).unwrap_err();
        assert!(matches!(e, InRootError::NotDir { .. }), "{e}");
        let e = check_dir_beneath(base, outside.path()).unwrap_err();
        assert!(matches!(e, InRootError::Outside { .. }), "{e}");
        let e = check_dir_beneath(base, &base.join("var/../etc")).unwrap_err();
        assert!(matches!(e, InRootError::Outside { .. }), "{e}");
    }

    /// An RHCOS-like root with every kind of link: followed as the host would, clamped to the
    /// root, and the outcome of each path the same as the kernel's `openat2(RESOLVE_IN_ROOT)`.
    #[test]
    fn host_paths_resolve_inside_the_root_like_openat2_in_root() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir_all(outside.path().join("etc")).unwrap();
        for dir in ["var/usrlocal/bin", "var/opt", "var/lib", "usr"] {
            fs::create_dir_all(r.join(dir)).unwrap();
        }
        fs::write(r.join("var/file"), b"x").unwrap();
        symlink("../var/usrlocal", r.join("usr/local")).unwrap();
        symlink("var/opt", r.join("opt")).unwrap();
        symlink(outside.path().join("etc"), r.join("etc")).unwrap();
        symlink("/var/usrlocal", r.join("abs")).unwrap();
        symlink("../../../../../../../../var", r.join("up")).unwrap();
        symlink("/", r.join("slash")).unwrap();
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        symlink("nowhere", r.join("dangling")).unwrap();
        symlink("var/file", r.join("tofile")).unwrap();
        // A chain of 41 links: l0 -> l1 -> ... -> l40 -> var.
        symlink("var", r.join("l40")).unwrap();
        for i in 0..40 {
            symlink(format!("l{}", i + 1), r.join(format!("l{i}"))).unwrap();
        }

        enum Want {
            At(&'static str),
            Missing(&'static str),
            Dangling(&'static str),
            Loop,
            NotDir,
            Gone,
        }
        use Want::*;
        let cases = [
            ("/", At("")),
            ("/var/lib", At("var/lib")),
            ("/usr/local", At("var/usrlocal")),
            ("/usr/local/bin", At("var/usrlocal/bin")),
            ("/usr/local/new/deeper", Missing("var/usrlocal/new/deeper")),
            // `..` after a link is taken from where the link led (as the kernel does).
            ("/usr/local/..", At("var")),
            ("/usr/local/../../..", At("")),
            ("/opt", At("var/opt")),
            ("/abs/bin", At("var/usrlocal/bin")),
            ("/up/lib", At("var/lib")),
            ("/slash/var", At("var")),
            ("/../../var", At("var")),
            ("/var/lib/new/deeper", Missing("var/lib/new/deeper")),
            ("/var/missing/../lib", Gone),
            ("/etc", Dangling("etc")),
            ("/etc/kubernetes", Dangling("etc")),
            ("/dangling", Dangling("dangling")),
            ("/loop1", Loop),
            ("/l0", Loop),
            ("/l1/lib", At("var/lib")),
            ("/var/file", NotDir),
            ("/var/file/x", NotDir),
            ("/tofile", NotDir),
        ];
        let root_fd =
            rustix::fs::open(r, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
        let mut oracle = true;
        for (path, want) in cases {
            let got = resolve_in_root(r, Path::new(path));
            match (&want, &got) {
                (At(p), Ok(g)) => {
                    assert_eq!(*g, r.join(p), "{path}");
                    assert!(g.is_dir(), "{path}");
                }
                (Missing(p), Ok(g)) => {
                    assert_eq!(*g, r.join(p), "{path}");
                    assert!(!g.exists(), "{path}");
                }
                (Dangling(l), Err(InRootError::Dangling { link, .. })) => {
                    assert_eq!(*link, r.join(l), "{path}");
                }
                (Loop, Err(InRootError::Loop { .. }))
                | (NotDir, Err(InRootError::NotDir { .. })) => {}
                (Gone, Err(InRootError::Io { source, .. }))
                    if source.kind() == io::ErrorKind::NotFound => {}
                _ => panic!("{path}: {got:?}"),
            }
            // Nothing ever resolves outside the root.
            if let Ok(g) = &got {
                assert!(g.starts_with(r), "{path}: {}", g.display());
            }
            if !oracle {
                continue;
            }
            let kernel = rustix::fs::openat2(
                &root_fd,
                path,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
                rustix::fs::ResolveFlags::IN_ROOT,
            );
            match (kernel, &want) {
                (Err(rustix::io::Errno::NOSYS), _) => {
                    eprintln!("openat2 is not available: not comparing with the kernel");
                    oracle = false;
                }
                (Ok(fd), At(p)) => {
                    let k = rustix::fs::fstat(&fd).unwrap();
                    let m = rustix::fs::stat(r.join(p)).unwrap();
                    assert_eq!((k.st_dev, k.st_ino), (m.st_dev, m.st_ino), "{path}");
                }
                (Err(rustix::io::Errno::NOENT), Missing(_) | Dangling(_) | Gone)
                | (Err(rustix::io::Errno::LOOP), Loop)
                | (Err(rustix::io::Errno::NOTDIR), NotDir) => {}
                (k, _) => panic!("{path}: the kernel says {:?}, we say {got:?}", k.err()),
            }
        }
        // A root that does not exist: all of it would be created.
        assert_eq!(
            resolve_in_root(&r.join("none"), Path::new("/a/b")).unwrap(),
            r.join("none/a/b")
        );
        assert_eq!(
            HostRoot::new(r).resolve_dir("/usr/local").unwrap(),
            r.join("var/usrlocal")
        );
        let e = resolve_in_root(r, Path::new("/etc")).unwrap_err();
        assert!(
            e.to_string()
                .contains("does not exist inside the host root"),
            "{e}"
        );
        assert!(outside.path().join("etc").is_dir());
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
}
