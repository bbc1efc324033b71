//! Archives of real files round-tripped (owners, modes, mtimes, xattrs, symlinks, hard links,
//! sparse files, fifos; every compression), mirrored restores, hostile archives refused
//! before anything is written, and the dry run's damage and on-disk checks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

mod backup_support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use backup_support::require;
use talm_agent::host::archive::{
    ArchiveError, ArchiveWriter, Compression, RestoreOptions, check, check_listing, restore,
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
        // What the manifest records of a tree (the sanity floor of a restore).
        let (entries, bytes) = (w.entries, w.bytes);
        let digest = w.finish().unwrap();
        assert_eq!(digest, talm_agent::host::archive::digest_file(&ar).unwrap());
        // File data only: plain, secret, setuid, the long name and the sparse file's full
        // length; the hard links, links, directories and the fifo count as entries only.
        assert_eq!(bytes, 6 + 7 + 10 + 4 + (64 << 20), "{c:?}");
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
            host_paths: false,
        };
        // The dry run counts what the writer counted.
        let listing = check_listing(&ar, &dst, &opts).unwrap();
        assert_eq!(
            (listing.names.len() as u64, listing.bytes),
            (entries, bytes),
            "{c:?}: {:?}",
            listing.names
        );
        let stats = restore(&ar, &dst, &opts).unwrap();
        assert!(stats.entries >= 12);
        assert_eq!(stats.entries, entries, "{c:?}");
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
        host_paths: false,
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
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
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
            host_paths: false,
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
        host_paths: false,
    };
    let err = restore(&ar, &dst, &opts).unwrap_err();
    assert!(err.to_string().contains("symlink on disk"), "{err}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

/// The dry run reads every byte: an archive cut anywhere before its end-of-archive marker (at an
/// entry boundary, inside a header, inside data), or followed by junk, or whose compressed
/// stream is cut, is refused as damaged.
#[test]
fn the_dry_run_refuses_truncated_and_damaged_archives() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("a"), b"a\n").unwrap();
    fs::write(src.join("dir/big"), vec![b'x'; 5000]).unwrap();
    fs::write(src.join("dir/zeros"), vec![0u8; 2048]).unwrap();
    std::os::unix::fs::symlink("a", src.join("link")).unwrap();
    let plain = d.path().join("t.tar");
    let mut w = ArchiveWriter::create(&plain, Compression::None, NO_TICK).unwrap();
    w.add_tree(&src, Path::new(""), &|_| false).unwrap();
    w.finish().unwrap();
    let bytes = fs::read(&plain).unwrap();
    let dst = d.path().join("dst");
    let opts = RestoreOptions {
        jail: &dst,
        allow_absolute_symlinks: false,
        mirror_keep: None,
        host_paths: false,
    };
    let names = check(&plain, &dst, &opts).unwrap();
    assert_eq!(names.len(), 5, "{names:?}");

    // The writer ends with two zero blocks; every cut before them is damage.
    let marker = bytes.len() - 1024;
    assert!(bytes[marker..].iter().all(|b| *b == 0));
    let cut = d.path().join("cut.tar");
    let mut cuts: Vec<usize> = (0..marker).step_by(512).collect();
    cuts.extend((0..marker).step_by(512).map(|c| c + 100));
    for n in cuts {
        fs::write(&cut, &bytes[..n]).unwrap();
        let err = check(&cut, &dst, &opts).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Damaged { .. }) && err.to_string().contains("truncated"),
            "cut at {n}: {err}"
        );
    }
    let mut junk = bytes.clone();
    junk.extend_from_slice(b"trailing junk");
    fs::write(&cut, &junk).unwrap();
    let err = check(&cut, &dst, &opts).unwrap_err();
    assert!(
        err.to_string().contains("after the end-of-archive"),
        "{err}"
    );

    // A header field the extraction needs that does not parse (here the owner).
    hostile(&cut, &[("f", tar::EntryType::Regular, "")]);
    let mut bad = fs::read(&cut).unwrap();
    bad[108..116].copy_from_slice(b"zzzzzzz\0");
    let mut h = tar::Header::new_old();
    h.as_mut_bytes().copy_from_slice(&bad[..512]);
    h.set_cksum();
    bad[..512].copy_from_slice(h.as_bytes());
    fs::write(&cut, &bad).unwrap();
    let err = check(&cut, &dst, &opts).unwrap_err();
    assert!(
        matches!(err, ArchiveError::Damaged { .. }) && err.to_string().contains("header"),
        "{err}"
    );

    for compression in [Compression::Gzip(6), Compression::Zstd3] {
        let ar = d.path().join(format!("t{}", compression.suffix()));
        let mut w = ArchiveWriter::create(&ar, compression, NO_TICK).unwrap();
        w.add_tree(&src, Path::new(""), &|_| false).unwrap();
        w.finish().unwrap();
        assert_eq!(check(&ar, &dst, &opts).unwrap(), names);
        let z = fs::read(&ar).unwrap();
        fs::write(&ar, &z[..z.len() - 20]).unwrap();
        let err = check(&ar, &dst, &opts).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Damaged { .. }),
            "{compression:?}: {err}"
        );
    }
    assert!(!dst.exists());
}

/// On disk, the dry run and the restore follow one rule: the target and every directory on the
/// way to an entry are real directories, except where the archive's own directory entry
/// replaces what is there.
#[test]
fn links_on_disk_are_refused_unless_the_archive_replaces_them() {
    let d = tempfile::tempdir().unwrap();
    let outside = d.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let jail = d.path().join("root");
    let dst = jail.join("etc");
    fs::create_dir_all(&dst).unwrap();
    std::os::unix::fs::symlink(&outside, dst.join("sub")).unwrap();
    let opts = RestoreOptions {
        jail: &jail,
        allow_absolute_symlinks: true,
        mirror_keep: None,
        host_paths: false,
    };

    // Only the file: it would be written through the link.
    let ar = d.path().join("file-only.tar");
    hostile(&ar, &[("sub/f", tar::EntryType::Regular, "")]);
    let err = check(&ar, &dst, &opts).unwrap_err();
    assert!(
        matches!(err, ArchiveError::OnDisk { .. }) && err.to_string().contains("symlink on disk"),
        "{err}"
    );

    // The directory first: it replaces the link, and the file goes into it.
    let ar = d.path().join("dir-then-file.tar");
    hostile(
        &ar,
        &[
            ("sub", tar::EntryType::Directory, ""),
            ("sub/f", tar::EntryType::Regular, ""),
        ],
    );
    assert_eq!(check(&ar, &dst, &opts).unwrap().len(), 2);
    restore(&ar, &dst, &opts).unwrap();
    assert!(fs::symlink_metadata(dst.join("sub")).unwrap().is_dir());
    assert_eq!(fs::read(dst.join("sub/f")).unwrap(), b"pwned\n");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);

    // The target itself behind a link, below the jail: refused, nothing written there.
    fs::remove_dir_all(&dst).unwrap();
    std::os::unix::fs::symlink(&outside, &dst).unwrap();
    let err = restore(&ar, &dst, &opts).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::OnDisk { source, .. } if source.path() == dst.as_path()),
        "{err}"
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

/// An archive of host paths (the extras) restored at the host root: the directories on the way
/// to each entry are resolved inside the root as the host resolves them (RHCOS: `/opt` is a
/// link to `var/opt`), absolute links included, so the files land in the root's real
/// directories and the links stay links; a link leading to nothing is refused before anything
/// is written; and such an archive is only ever restored at the root itself.
#[test]
fn host_paths_are_restored_through_the_roots_own_links() {
    let d = tempfile::tempdir().unwrap();
    let jail = d.path().join("root");
    let unique = format!("talm-test-{}", std::process::id());
    for dir in ["var/opt", "var/srv", "var/usrlocal"] {
        fs::create_dir_all(jail.join(dir)).unwrap();
    }
    std::os::unix::fs::symlink("var/opt", jail.join("opt")).unwrap();
    // Absolute: followed by the OS, it would lead to the machine's own /var/srv.
    std::os::unix::fs::symlink("/var/srv", jail.join("srv")).unwrap();
    let opts = RestoreOptions {
        jail: &jail,
        allow_absolute_symlinks: true,
        mirror_keep: None,
        host_paths: true,
    };
    let ar = d.path().join("extras.tar");
    let srv_file = format!("srv/{unique}/conf");
    hostile(
        &ar,
        &[
            ("opt/extra/tool.sh", tar::EntryType::Regular, ""),
            (
                "opt/extra/tool-link.sh",
                tar::EntryType::Link,
                "opt/extra/tool.sh",
            ),
            (&srv_file, tar::EntryType::Regular, ""),
            ("var/new/file", tar::EntryType::Regular, ""),
        ],
    );
    let names = check(&ar, &jail, &opts).unwrap();
    assert_eq!(names.len(), 4);
    restore(&ar, &jail, &opts).unwrap();
    let tool = jail.join("var/opt/extra/tool.sh");
    assert_eq!(fs::read(&tool).unwrap(), b"pwned\n");
    let link = jail.join("var/opt/extra/tool-link.sh");
    assert_eq!(
        fs::metadata(&link).unwrap().ino(),
        fs::metadata(&tool).unwrap().ino()
    );
    assert_eq!(
        fs::read(jail.join("var/srv").join(&unique).join("conf")).unwrap(),
        b"pwned\n"
    );
    assert!(!Path::new("/var/srv").join(&unique).exists());
    assert_eq!(fs::read(jail.join("var/new/file")).unwrap(), b"pwned\n");
    for l in ["opt", "srv"] {
        assert!(
            fs::symlink_metadata(jail.join(l)).unwrap().is_symlink(),
            "{l}"
        );
    }

    // A link to nothing (a /var not mounted): refused, nothing created.
    std::os::unix::fs::symlink("var/home", jail.join("home")).unwrap();
    let ar = d.path().join("dangling.tar");
    hostile(
        &ar,
        &[
            ("var/usrlocal/first", tar::EntryType::Regular, ""),
            (
                "home/core/.ssh/authorized_keys",
                tar::EntryType::Regular,
                "",
            ),
        ],
    );
    let err = restore(&ar, &jail, &opts).unwrap_err();
    assert!(
        matches!(err, ArchiveError::OnDisk { .. }) && err.to_string().contains("does not exist"),
        "{err}"
    );
    assert!(!jail.join("var/home").exists());
    assert!(!jail.join("var/usrlocal/first").exists());

    // Host paths are restored at the root only.
    let err = check(&ar, &jail.join("var"), &opts).unwrap_err();
    assert!(err.to_string().contains("host root"), "{err}");
}
