//! The backup manifest (size and sha256 of every artifact, and the entry count and data size of
//! each mirrored tree's archive) and the completion marker, and the check that a backup
//! directory is complete and intact.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::layout::{MANIFEST, MARKER};
use crate::host::archive::digest_file;
use crate::host::root::check_dir_beneath;
use talm_shared::hex;

/// One file of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Path relative to the backup directory.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// sha256, lower-case hex.
    pub sha256: String,
}

/// What a backup holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version (1).
    pub format: u32,
    /// When the backup was taken (as given by the caller).
    pub created: String,
    /// The pinned ostree deployment (`<checksum>.<serial>`), if the host has ostree.
    pub pinned_deployment: Option<String>,
    /// The etcd revision of the snapshot, when etcd reports it.
    pub etcd_revision: Option<i64>,
    /// Every artifact, in the order written.
    pub artifacts: Vec<Artifact>,
    /// Files that changed while being archived (kept at their listed size).
    #[serde(default)]
    pub changed_while_reading: Vec<String>,
    /// What each mirrored tree's archive holds, as written: the sanity floor of a restore
    /// (`talm-agent recover` refuses an archive far below it). Empty in a manifest written by
    /// an older agent: then no floor applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trees: Vec<TreeCount>,
}

/// The size of one tree's archive when it was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeCount {
    /// The host directory (`/etc`, `/usr/local`, `/var/lib/kubelet`).
    pub dir: String,
    /// The artifact (relative to the backup directory).
    pub archive: String,
    /// Entries in the archive: files, directories, links and special files.
    pub entries: u64,
    /// Bytes of file data in the archive.
    pub bytes: u64,
}

impl Manifest {
    /// The recorded size of the archive of `dir`, if the backup recorded one.
    pub fn tree(&self, dir: &str) -> Option<&TreeCount> {
        self.trees.iter().find(|t| t.dir == dir)
    }
}

/// The completion marker's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// sha256 of `manifest.json`.
    pub manifest_sha256: String,
}

/// Why a backup is not usable.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No completion marker: the backup never finished.
    #[error(
        "{dir}: the backup is incomplete (no {MARKER} marker); take a new backup with `talm-agent backup`"
    )]
    Incomplete {
        /// The backup directory.
        dir: PathBuf,
    },
    /// The manifest or marker cannot be read.
    #[error("{path}: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An artifact is missing, or its size or sha256 differs from the manifest.
    #[error("{dir}: artifact {name} is corrupt: {reason}; this backup cannot be trusted")]
    Corrupt {
        /// The backup directory.
        dir: PathBuf,
        /// The artifact.
        name: String,
        /// What differs.
        reason: String,
    },
}

/// Reads the manifest and checks the marker and every artifact's size and sha256.
pub fn verify(dir: &Path) -> Result<Manifest, VerifyError> {
    let marker_path = dir.join(MARKER);
    let marker_text = match std::fs::read(&marker_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VerifyError::Incomplete {
                dir: dir.to_owned(),
            });
        }
        Err(e) => {
            return Err(VerifyError::Unreadable {
                path: marker_path,
                reason: e.to_string(),
            });
        }
    };
    let marker: Marker =
        serde_json::from_slice(&marker_text).map_err(|e| VerifyError::Unreadable {
            path: marker_path.clone(),
            reason: e.to_string(),
        })?;
    let manifest_path = dir.join(MANIFEST);
    let text = std::fs::read(&manifest_path).map_err(|e| VerifyError::Unreadable {
        path: manifest_path.clone(),
        reason: e.to_string(),
    })?;
    if hex::encode(ring::digest::digest(&ring::digest::SHA256, &text).as_ref())
        != marker.manifest_sha256
    {
        return Err(VerifyError::Corrupt {
            dir: dir.to_owned(),
            name: MANIFEST.into(),
            reason: "its sha256 differs from the one in the completion marker".into(),
        });
    }
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| VerifyError::Unreadable {
            path: manifest_path,
            reason: e.to_string(),
        })?;
    for a in &manifest.artifacts {
        let corrupt = |reason: String| VerifyError::Corrupt {
            dir: dir.to_owned(),
            name: a.name.clone(),
            reason,
        };
        let path = artifact_path(dir, &a.name).map_err(corrupt)?;
        let d = digest_file(&path).map_err(|e| corrupt(e.to_string()))?;
        if d.size != a.size {
            return Err(corrupt(format!(
                "{} bytes, the manifest says {}",
                d.size, a.size
            )));
        }
        if d.sha256 != a.sha256 {
            return Err(corrupt("sha256 differs from the manifest".into()));
        }
    }
    Ok(manifest)
}

/// `dir/name` when `name` is a regular file inside the backup directory, reached without
/// following a link: a relative path of plain components (no `..`, not absolute). Anything else
/// is refused before it is read: a name out of the directory would make recover restore from
/// elsewhere, and a FIFO or a device (`/dev/zero`) would never finish reading.
fn artifact_path(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let rel = Path::new(name);
    if name.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("its name is not a path inside the backup directory".into());
    }
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        check_dir_beneath(dir, parent).map_err(|e| e.to_string())?;
    }
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_file() => Ok(path),
        Ok(m) if m.file_type().is_symlink() => Err("it is a symlink, not a file".into()),
        Ok(_) => Err("it is not a regular file".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A complete backup in `dir` whose manifest lists `names`, each with the size and sha256
    /// of `data` (so only the name decides whether it verifies).
    fn backup_listing(dir: &Path, names: &[&str], data: &[u8]) {
        let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
        let manifest = Manifest {
            format: 1,
            artifacts: names
                .iter()
                .map(|n| Artifact {
                    name: (*n).to_string(),
                    size: data.len() as u64,
                    sha256: sha256.clone(),
                })
                .collect(),
            ..Default::default()
        };
        let text = serde_json::to_vec(&manifest).unwrap();
        std::fs::write(dir.join(MANIFEST), &text).unwrap();
        let marker = Marker {
            manifest_sha256: hex::encode(
                ring::digest::digest(&ring::digest::SHA256, &text).as_ref(),
            ),
        };
        std::fs::write(dir.join(MARKER), serde_json::to_vec(&marker).unwrap()).unwrap();
    }

    fn corrupt_name(r: Result<Manifest, VerifyError>) -> String {
        match r {
            Err(VerifyError::Corrupt { name, .. }) => name,
            other => panic!("expected a corrupt artifact, got {other:?}"),
        }
    }

    #[test]
    fn artifacts_are_plain_files() {
        let t = tempfile::tempdir().unwrap();
        let b = t.path().join("backup");
        std::fs::create_dir_all(b.join("cluster")).unwrap();
        std::fs::write(b.join("etc.tar"), b"etc").unwrap();
        std::fs::write(b.join("cluster/snapshot.db"), b"etc").unwrap();
        backup_listing(&b, &["etc.tar", "cluster/snapshot.db"], b"etc");
        assert_eq!(verify(&b).unwrap().artifacts.len(), 2);
    }

    /// Issue 14 fuzzing (journal_manifest): artifact names out of the backup directory were
    /// read and trusted when their checksum matched; recover would then restore from them.
    #[test]
    fn artifact_names_out_of_the_backup_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let b = t.path().join("backup");
        std::fs::create_dir(&b).unwrap();
        let outside = t.path().join("outside.tar");
        std::fs::write(&outside, b"etc").unwrap();
        for name in [
            "../outside.tar",
            outside.to_str().unwrap(),
            "./../outside.tar",
            "",
        ] {
            backup_listing(&b, &[name], b"etc");
            assert_eq!(corrupt_name(verify(&b)), name);
        }
        // A link inside the backup, to the file outside or through a linked directory.
        std::os::unix::fs::symlink(&outside, b.join("etc.tar")).unwrap();
        std::os::unix::fs::symlink(t.path(), b.join("cluster")).unwrap();
        for name in ["etc.tar", "cluster/outside.tar"] {
            backup_listing(&b, &[name], b"etc");
            let e = verify(&b).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("symlink"), "{e}");
        }
    }

    /// Issue 14 fuzzing (journal_manifest): an artifact that is a FIFO or a device was read
    /// until its end, which never comes (`/dev/zero`, a FIFO nobody writes): verify hung. The
    /// check runs on a thread so that the old behaviour fails the test instead of hanging it.
    #[test]
    fn special_file_artifacts_are_refused_without_reading_them() {
        let t = tempfile::tempdir().unwrap();
        let b = t.path().join("backup");
        std::fs::create_dir(&b).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            b.join("etc.tar"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        for name in ["etc.tar", "/dev/zero"] {
            backup_listing(&b, &[name], b"");
            let (tx, rx) = std::sync::mpsc::channel();
            let dir = b.clone();
            // Only the outcome crosses the channel (a Manifest is large).
            std::thread::spawn(move || tx.send(verify(&dir).map(drop).map_err(|e| e.to_string())));
            let r = rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("verify is still reading {name} after 30 s"));
            let e = r.unwrap_err();
            assert!(e.contains(name), "{e}");
        }
    }
}
