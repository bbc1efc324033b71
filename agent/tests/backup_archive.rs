//! Archives of real files round-tripped (owners, modes, mtimes, xattrs, symlinks, hard links,
//! sparse files, fifos; every compression), mirrored restores, and hostile archives refused
//! before anything is written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

mod backup_support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use backup_support::require;
use talm_agent::host::archive::{
    ArchiveError, ArchiveWriter, Compression, RestoreOptions, restore,
};
use talm_agent::host::exec::{Cmd, CommandRunner, RealRunner};

const NO_TICK: &(dyn Fn(u64) -> std::io::Result<()> + Sync) = &|_| Ok(());

fn set_mtime(p: &Path, secs: u64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// A tree with every kind of thing the backup must keep.
fn make_tree(src: &Path) {
    fs::create_dir_all(src.join("dir/sub")).unwrap();
    fs::write(src.join("plain"), b"hello\n").unwrap();
    fs::write(src.join("dir/secret"), b"s3cr3t\n").unwrap();
    fs::set_permissions(src.join("dir/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(src.join("dir/secret"), Some(1234), Some(5678)).unwrap();
    fs::write(src.join("dir/sub/setuid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(
        src.join("dir/sub/setuid"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::os::unix::fs::chown(src.join("dir/sub"), Some(42), Some(43)).unwrap();
    fs::set_permissions(src.join("dir/sub"), fs::Permissions::from_mode(0o750)).unwrap();
    set_mtime(&src.join("plain"), 1_600_000_000);
    set_mtime(&src.join("dir/secret"), 1_500_000_000);
    // Symlinks: relative inside, absolute (host-style), dangling.
    std::os::unix::fs::symlink("plain", src.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("../plain", src.join("dir/link-up")).unwrap();
    // Hard links.
    fs::hard_link(src.join("plain"), src.join("dir/plain-hard")).unwrap();
    fs::hard_link(src.join("plain"), src.join("dir/sub/plain-hard2")).unwrap();
    // A sparse file: 64 MiB with two small data extents.
    let mut f = fs::File::create(src.join("sparse.db")).unwrap();
    f.set_len(64 << 20).unwrap();
    f.seek(SeekFrom::Start(4096)).unwrap();
    f.write_all(&[7u8; 8192]).unwrap();
    f.seek(SeekFrom::Start(40 << 20)).unwrap();
    f.write_all(&[9u8; 4096]).unwrap();
    drop(f);
    // xattrs (user.* and trusted.*, the latter only for root; SELinux labels work the same way).
    rustix_set(&src.join("plain"), "user.talm", b"kept");
    rustix_set(&src.join("dir"), "trusted.talm", b"\x00binary\xff");
    // A long name (GNU long-name records).
    let long = "n".repeat(180);
    fs::write(src.join("dir").join(&long), b"long").unwrap();
    // A fifo.
    RealRunner::new()
        .run(&Cmd::new("mkfifo").arg(src.join("fifo")))
        .unwrap();
}

fn rustix_set(p: &Path, name: &str, value: &[u8]) {
    RealRunner::new()
        .run(
            &Cmd::new("setfattr")
                .args(["-n", name, "-v"])
                .arg(format!("0x{}", talm_shared::hex::encode(value)))
                .arg(p),
        )
        .unwrap();
}

fn xattrs(p: &Path) -> BTreeMap<String, String> {
    let out = RealRunner::new()
        .run(
            &Cmd::new("getfattr")
                .args(["-h", "-d", "-m", "-", "-e", "hex"])
                .arg(p),
        )
        .unwrap();
    out.stdout_text()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Everything that must survive, per relative path.
fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, PathBuf> = BTreeMap::new();
    fn walk(
        root: &Path,
        rel: &Path,
        out: &mut BTreeMap<PathBuf, String>,
        inodes: &mut BTreeMap<u64, PathBuf>,
    ) {
        let mut names: Vec<_> = fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let r = rel.join(&n);
            let p = root.join(&r);
            let m = fs::symlink_metadata(&p).unwrap();
            let mut d = format!("mode={:o} uid={} gid={}", m.mode(), m.uid(), m.gid());
            if m.file_type().is_symlink() {
                d += &format!(" -> {}", fs::read_link(&p).unwrap().display());
            } else {
                d += &format!(" xattrs={:?}", xattrs(&p));
            }
            if m.is_file() {
                d += &format!(
                    " mtime={} len={} sum={}",
                    m.mtime(),
                    m.len(),
                    talm_agent::host::archive::digest_file(&p).unwrap().sha256
                );
                if m.nlink() > 1 {
                    let first = inodes.entry(m.ino()).or_insert_with(|| r.clone());
                    d += &format!(" linked-to={}", first.display());
                }
            }
            out.insert(r.clone(), d);
            if m.is_dir() {
                walk(root, &r, out, inodes);
            }
        }
    }
    walk(root, Path::new(""), &mut out, &mut inodes);
    out
}

#[test]
fn real_files_round_trip_with_every_compression() {
    if !require(
        "real_files_round_trip_with_every_compression",
        &["setfattr", "getfattr", "mkfifo"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_tree(&src);
    let want = describe(&src);
    for (i, c) in [Compression::Zstd3, Compression::Gzip(6), Compression::None]
        .into_iter()
        .enumerate()
    {
        let ar = d.path().join(format!("a{i}{}", c.suffix()));
        let mut w = ArchiveWriter::create(&ar, c, NO_TICK).unwrap();
        w.add_tree(&src, Path::new(""), &|_| false).unwrap();
        let digest = w.finish().unwrap();
        assert_eq!(digest, talm_agent::host::archive::digest_file(&ar).unwrap());
        // The sparse file's holes are not stored.
        assert!(
            c == Compression::None || digest.size < 1 << 20,
            "{c:?}: {} bytes",
            digest.size
        );

        let dst = d.path().join(format!("dst{i}"));
        let opts = RestoreOptions {
            jail: &dst,
            allow_absolute_symlinks: false,
            mirror_keep: None,
        };
        let stats = restore(&ar, &dst, &opts).unwrap();
        assert!(stats.entries >= 12);
        assert_eq!(describe(&dst), want, "{c:?}");
        let sparse = fs::metadata(dst.join("sparse.db")).unwrap();
        assert_eq!(sparse.len(), 64 << 20);
        assert!(
            sparse.blocks() * 512 < 1 << 20,
            "restored sparse file is dense: {} blocks",
            sparse.blocks()
        );
    }
}

#[test]
fn mirrored_restore_deletes_strays_but_keeps_exclusions() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("etc");
    fs::create_dir_all(src.join("kubernetes")).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    fs::write(src.join("kubernetes/kubelet.conf"), b"old").unwrap();
    let ar = d.path().join("etc.tar.zst");
    let excluded =
        |rel: &Path| rel.starts_with("kubernetes/manifests") || rel.starts_with("scratch");
    let mut w = ArchiveWriter::create(&ar, Compression::Zstd3, NO_TICK).unwrap();
    w.add_tree(&src, Path::new(""), &excluded).unwrap();
    w.finish().unwrap();

    // The "upgrade" changed things.
    fs::write(src.join("a"), b"changed").unwrap();
    fs::write(src.join("new-file"), b"n").unwrap();
    fs::create_dir_all(src.join("new-dir/x")).unwrap();
    fs::create_dir_all(src.join("kubernetes/manifests")).unwrap();
    fs::write(src.join("kubernetes/manifests/pod.yaml"), b"keep").unwrap();
    fs::create_dir_all(src.join("scratch")).unwrap();
    fs::remove_file(src.join("kubernetes/kubelet.conf")).unwrap();
    fs::create_dir(src.join("kubernetes/kubelet.conf")).unwrap(); // a dir where a file was

    let opts = RestoreOptions {
        jail: d.path(),
        allow_absolute_symlinks: true,
        mirror_keep: Some(&excluded),
    };
    let stats = restore(&ar, &src, &opts).unwrap();
    assert_eq!(stats.deleted, 2, "new-file and new-dir");
    assert_eq!(fs::read(src.join("a")).unwrap(), b"a");
    assert_eq!(
        fs::read(src.join("kubernetes/kubelet.conf")).unwrap(),
        b"old"
    );
    assert_eq!(
        fs::read(src.join("kubernetes/manifests/pod.yaml")).unwrap(),
        b"keep"
    );
    assert!(src.join("scratch").is_dir());
    assert!(!src.join("new-file").exists() && !src.join("new-dir").exists());
}

/// Builds a raw tar with hand-made headers (names the `tar` crate's safe setters refuse).
fn hostile(path: &Path, entries: &[(&str, tar::EntryType, &str)]) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    for (name, kind, link) in entries {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        let data: &[u8] = if *kind == tar::EntryType::Regular {
            b"pwned\n"
        } else {
            b""
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn hostile_archives_are_refused_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let outside = d.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let cases: Vec<(&str, Vec<(&str, tar::EntryType, &str)>, &str)> = vec![
        (
            "dotdot",
            vec![
                ("ok", tar::EntryType::Regular, ""),
                ("../outside/evil", tar::EntryType::Regular, ""),
            ],
            "`..`",
        ),
        (
            "absolute",
            vec![
                ("ok", tar::EntryType::Regular, ""),
                ("/tmp/talm-evil", tar::EntryType::Regular, ""),
            ],
            "absolute",
        ),
        (
            "escaping-symlink",
            vec![
                ("ok", tar::EntryType::Regular, ""),
                ("esc", tar::EntryType::Symlink, "../outside"),
            ],
            "escapes",
        ),
        (
            "absolute-symlink",
            vec![("abs", tar::EntryType::Symlink, "/etc")],
            "absolute",
        ),
        (
            "through-symlink",
            vec![
                ("inner", tar::EntryType::Directory, ""),
                ("lnk", tar::EntryType::Symlink, "inner"),
                ("lnk/file", tar::EntryType::Regular, ""),
            ],
            "through the symlink",
        ),
        (
            "hardlink-out",
            vec![("h", tar::EntryType::Link, "../outside/x")],
            "hard link",
        ),
        (
            "hardlink-abs",
            vec![("h", tar::EntryType::Link, "/etc/passwd")],
            "hard link",
        ),
        (
            "hardlink-unknown",
            vec![("h", tar::EntryType::Link, "nope")],
            "not an earlier file",
        ),
    ];
    for (name, entries, why) in cases {
        let ar = d.path().join(format!("{name}.tar"));
        hostile(&ar, &entries);
        let dst = d.path().join(format!("dst-{name}"));
        let opts = RestoreOptions {
            jail: &dst,
            allow_absolute_symlinks: false,
            mirror_keep: None,
        };
        let err = restore(&ar, &dst, &opts).unwrap_err();
        assert!(matches!(err, ArchiveError::Unsafe { .. }), "{name}: {err}");
        assert!(err.to_string().contains(why), "{name}: {err}");
        assert!(!dst.exists(), "{name}: something was written");
    }
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!Path::new("/tmp/talm-evil").exists());

    // A symlink already on disk is not written through either.
    let dst = d.path().join("dst-disk-link");
    fs::create_dir_all(&dst).unwrap();
    std::os::unix::fs::symlink(&outside, dst.join("sub")).unwrap();
    let ar = d.path().join("disk-link.tar");
    hostile(&ar, &[("sub/evil", tar::EntryType::Regular, "")]);
    let opts = RestoreOptions {
        jail: &dst,
        allow_absolute_symlinks: false,
        mirror_keep: None,
    };
    let err = restore(&ar, &dst, &opts).unwrap_err();
    assert!(err.to_string().contains("symlink on disk"), "{err}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}
