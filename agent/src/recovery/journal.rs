//! The recovery journal: the steps already finished, written atomically (temp file, fsync,
//! rename, fsync dir) after every step, so an interruption anywhere resumes at the next step.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::root::write_atomic;

/// What to do about a journal that cannot be read.
const RESTART_HINT: &str = "inspect it, or start over with `talm-agent recover --restart`, which moves it aside (to recovery.journal.bad) and keeps it";

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
                    reason: format!("unreadable ({e}); {RESTART_HINT}"),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(JournalError {
                path: path.to_owned(),
                reason: format!("{e}; {RESTART_HINT}"),
            }),
        }
    }

    /// Moves the journal (whatever it is: a bad file, a directory) aside, to the first free
    /// name of `<name>.bad`, `<name>.bad.1`, ... beside it, and returns that path.
    pub fn set_aside(path: &Path) -> Result<PathBuf, JournalError> {
        let err = |reason: String| JournalError {
            path: path.to_owned(),
            reason,
        };
        let mut base = path.as_os_str().to_owned();
        base.push(".bad");
        let mut kept = PathBuf::from(&base);
        let mut n = 0u32;
        loop {
            match std::fs::symlink_metadata(&kept) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(err(format!("{}: {e}", kept.display()))),
                Ok(_) => {
                    n += 1;
                    let mut name = base.clone();
                    name.push(format!(".{n}"));
                    kept = PathBuf::from(name);
                }
            }
        }
        std::fs::rename(path, &kept)
            .map_err(|e| err(format!("cannot move it to {}: {e}", kept.display())))?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| err(format!("{}: {e}", dir.display())))?;
        }
        Ok(kept)
    }

    /// Writes the journal durably.
    pub fn save(&self, path: &Path) -> Result<(), JournalError> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| JournalError {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        write_atomic(path, &text).map_err(|e| JournalError {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Whether `step` is finished.
    pub fn is_done(&self, step: &str) -> bool {
        self.done.iter().any(|s| s == step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_journal_is_moved_to_the_first_free_name() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("recovery.journal");
        std::fs::write(&p, b"{oops").unwrap();
        let e = Journal::load(&p).unwrap_err();
        assert!(e.to_string().contains("--restart"), "{e}");
        assert_eq!(
            Journal::set_aside(&p).unwrap(),
            d.path().join("recovery.journal.bad")
        );
        std::fs::create_dir(&p).unwrap();
        assert_eq!(
            Journal::set_aside(&p).unwrap(),
            d.path().join("recovery.journal.bad.1")
        );
        assert!(!p.exists());
        assert_eq!(
            std::fs::read(d.path().join("recovery.journal.bad")).unwrap(),
            b"{oops"
        );
        assert!(d.path().join("recovery.journal.bad.1").is_dir());
        // Nothing to move.
        assert!(Journal::set_aside(&p).is_err());
    }
}
