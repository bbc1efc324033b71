//! The state files read back after a crash or from a backup. The first byte picks (modulo 4):
//! 0 the recovery journal (`recovery.journal`): loaded, and when it loads, saved and loaded
//!   again, which must give the same journal; set aside must always work (`--restart`);
//! 1 the agent's task journal (`journal.json`), read and opened;
//! 2 a backup's `manifest.json`, with a matching `COMPLETE` marker written beside it (so the
//!   manifest is parsed and its artifacts are checked); the backup directory holds
//!   `etc.tar` (`etc`) and `cluster/snapshot.db` (`db`);
//! 3 a backup's `COMPLETE` marker in front of a valid manifest.
//! Files are read from a temp dir; nothing else may be read or written.
#![no_main]

use std::fs;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use talm_agent::backup::manifest;
use talm_agent::journal::Journal as TaskJournal;
use talm_agent::recovery::journal::Journal as RecoveryJournal;

fn sha256_hex(bytes: &[u8]) -> String {
    talm_shared::hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn recovery_journal(dir: &Path, bytes: &[u8]) {
    let path = dir.join("recovery.journal");
    if fs::write(&path, bytes).is_err() {
        return;
    }
    if let Ok(Some(j)) = RecoveryJournal::load(&path) {
        let _ = j.is_done("stage/step");
        let again = dir.join("again.journal");
        if let Err(e) = j.save(&again) {
            panic!("a journal that loads cannot be saved: {e}");
        }
        match RecoveryJournal::load(&again) {
            Ok(Some(back)) => assert_eq!(back, j, "the journal changed through save and load"),
            other => panic!("a saved journal does not load back: {other:?}"),
        }
    }
    if let Err(e) = RecoveryJournal::set_aside(&path) {
        panic!("a journal cannot be set aside: {e}");
    }
    assert!(!path.exists(), "the set-aside journal is still in place");
}

fn task_journal(dir: &Path, bytes: &[u8]) {
    let path = dir.join("journal.json");
    if fs::write(&path, bytes).is_err() {
        return;
    }
    let _ = TaskJournal::read(&path);
    if let Ok(j) = TaskJournal::open(dir) {
        let _ = j.pending_after(0);
        let _ = j.unfinished();
        let _ = j.ids();
        let _ = j.snapshot();
    }
}

fn backup(dir: &Path, manifest_bytes: &[u8], marker: Option<&[u8]>) {
    let backup = dir.join("backup");
    if fs::create_dir_all(backup.join("cluster")).is_err()
        || fs::write(backup.join("etc.tar"), b"etc").is_err()
        || fs::write(backup.join("cluster/snapshot.db"), b"db").is_err()
        || fs::write(backup.join("manifest.json"), manifest_bytes).is_err()
    {
        return;
    }
    let marker = match marker {
        Some(m) => m.to_vec(),
        None => format!(r#"{{"manifest_sha256":"{}"}}"#, sha256_hex(manifest_bytes)).into_bytes(),
    };
    if fs::write(backup.join("COMPLETE"), marker).is_err() {
        return;
    }
    let _ = manifest::verify(&backup);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    match which % 4 {
        0 => recovery_journal(dir.path(), rest),
        1 => task_journal(dir.path(), rest),
        2 => backup(dir.path(), rest, None),
        _ => {
            let manifest = format!(
                r#"{{"format":1,"created":"2026-12-07T04:00:00Z","pinned_deployment":null,"etcd_revision":null,"artifacts":[{{"name":"etc.tar","size":3,"sha256":"{}"}}]}}"#,
                sha256_hex(b"etc")
            );
            backup(dir.path(), manifest.as_bytes(), Some(rest));
        }
    }
});
