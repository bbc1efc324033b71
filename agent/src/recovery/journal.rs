//! The recovery journal: the steps already finished, written atomically (temp file, fsync,
//! rename, fsync dir) after every step, so an interruption anywhere resumes at the next step.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use talm_shared::fsutil::atomic_write;

/// The journal's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// Format version (1).
    pub format: u32,
    /// Finished steps, in order (`<stage>/<step>`).
    pub done: Vec<String>,
    /// Values steps recorded for later ones (container ids, revisions, the boot id).
    #[serde(default)]
    pub notes: BTreeMap<String, String>,
    /// The whole recovery is complete.
    #[serde(default)]
    pub finished: bool,
}

/// The journal file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("recovery journal {path}: {reason}")]
pub struct JournalError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

impl Journal {
    /// Reads the journal; `None` if there is none.
    pub fn load(path: &Path) -> Result<Option<Journal>, JournalError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| JournalError {
                    path: path.to_owned(),
                    reason: format!("unreadable ({e}); inspect it, or start over with --restart"),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(JournalError {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    /// Writes the journal durably.
    pub fn save(&self, path: &Path) -> Result<(), JournalError> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| JournalError {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        atomic_write(path, &text, 0o644).map_err(|e| JournalError {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Whether `step` is finished.
    pub fn is_done(&self, step: &str) -> bool {
        self.done.iter().any(|s| s == step)
    }
}
