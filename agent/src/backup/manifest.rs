//! The backup manifest (size and sha256 of every artifact, and the entry count and data size of
//! each mirrored tree's archive) and the completion marker, and the check that a backup
//! directory is complete and intact.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::layout::{MANIFEST, MARKER};
use crate::host::archive::digest_file;
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
        let d = digest_file(&dir.join(&a.name)).map_err(|e| corrupt(e.to_string()))?;
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
