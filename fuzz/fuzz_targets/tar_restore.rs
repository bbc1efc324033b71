//! The archive restore (`host::archive::restore`, which runs the complete `check` dry run
//! first) against a temp root. The first byte holds the options (bit 0: absolute symlinks
//! allowed, bit 1: mirror, bit 2: host paths, bit 3: into a subdirectory); the rest is the
//! archive (plain tar, or gzip/zstd by its magic bytes).
//!
//! Layout: a temp parent holds `root` (the jail, pre-populated with a directory, a file and
//! links that point out of it, one relative and one absolute) and `outside` (the target of
//! those links). After every input, whatever the restore returned, the parent must hold only
//! `root` and an empty `outside`: anything else landed outside the root. The archive itself
//! lives in a separate temp dir.
#![no_main]

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use talm_agent::host::archive::{RestoreOptions, restore};

fn names(dir: &Path) -> BTreeSet<String> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) => panic!("cannot list {}: {e}", dir.display()),
    }
}

fn setup(parent: &Path) -> std::io::Result<()> {
    let root = parent.join("root");
    let outside = parent.join("outside");
    fs::create_dir(&root)?;
    fs::create_dir(&outside)?;
    fs::create_dir_all(root.join("etc/sub"))?;
    fs::write(root.join("etc/keep"), b"kept")?;
    fs::write(root.join("etc/sub/old"), b"old")?;
    std::os::unix::fs::symlink("../../outside", root.join("etc/up"))?;
    std::os::unix::fs::symlink(&outside, root.join("abs"))?;
    std::os::unix::fs::symlink(&outside, root.join("etc/sub/abs"))?;
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, archive_bytes)) = data.split_first() else {
        return;
    };
    let (Ok(parent), Ok(store)) = (tempfile::tempdir(), tempfile::tempdir()) else {
        return;
    };
    if let Err(e) = setup(parent.path()) {
        panic!("setup: {e}");
    }
    let archive = store.path().join("archive.tar");
    if let Err(e) = fs::write(&archive, archive_bytes) {
        panic!("write archive: {e}");
    }
    let root = parent.path().join("root");
    let keep = |p: &Path| p == Path::new("etc/keep") || p.starts_with("abs");
    let host_paths = flags & 4 != 0;
    let dest = if flags & 8 != 0 && !host_paths {
        root.join("etc")
    } else {
        root.clone()
    };
    let opts = RestoreOptions {
        jail: &root,
        allow_absolute_symlinks: flags & 1 != 0,
        mirror_keep: if flags & 2 != 0 && !host_paths {
            Some(&keep)
        } else {
            None
        },
        host_paths,
    };
    let _ = restore(&archive, &dest, &opts);

    let expected: BTreeSet<String> = ["outside", "root"].iter().map(|s| s.to_string()).collect();
    let found = names(parent.path());
    assert_eq!(found, expected, "the restore wrote beside the root");
    let outside = parent.path().join("outside");
    match fs::symlink_metadata(&outside) {
        Ok(m) if m.is_dir() => {}
        other => panic!("the directory beside the root was replaced: {other:?}"),
    }
    let leaked = names(&outside);
    assert!(
        leaked.is_empty(),
        "the restore wrote outside the root: {leaked:?}"
    );
    assert_eq!(
        names(store.path()).len(),
        1,
        "the restore wrote beside the archive"
    );
});
