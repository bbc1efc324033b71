//! The preflight of a recovery, run before its first destructive step (every run, so a backup
//! or a host changed between stages is caught too): the `/etc` exclusions, each restore's
//! archive (a complete dry run into its destination, its layout, and the sanity floor against
//! the counts the backup recorded), each destination (resolved inside the host root, a place of
//! its own), the static-pod resources and the etcd snapshot that `cluster-restore.sh` takes.

use std::path::{Path, PathBuf};

use super::{
    RESTORES, RecoverConfig, RecoverError, Reporter, SNAPSHOT, STATIC_PODS_ARCHIVE,
    STATIC_PODS_DEST, STATIC_PODS_TOP,
};
use crate::backup::layout::{ETC_EXCLUDE, TREES};
use crate::backup::manifest::Manifest;
use crate::host::archive::{self, ArchiveError, RestoreOptions};

/// The name of the manifest's artifact that starts with `prefix`.
fn artifact_name<'m>(manifest: &'m Manifest, prefix: &str) -> Option<&'m str> {
    manifest
        .artifacts
        .iter()
        .map(|a| a.name.as_str())
        .find(|n| n.starts_with(prefix))
}

/// Everything the destructive steps will need, checked before the first one (every run, so a
/// backup or a host changed between stages is caught too): the `/etc` exclusions (returned),
/// each restore's archive (a complete dry run into its destination, then its layout), the
/// static-pod resources and the etcd snapshot that `cluster-restore.sh` takes.
pub(super) fn preflight(
    cfg: &RecoverConfig,
    rep: &dyn Reporter,
    backup: &Path,
    manifest: &Manifest,
) -> Result<Checked, RecoverError> {
    let root = &cfg.host.root;
    let exclusions: Vec<String> = std::fs::read_to_string(backup.join(ETC_EXCLUDE))
        .map_err(|e| RecoverError::Archive {
            name: ETC_EXCLUDE.into(),
            reason: e.to_string(),
        })?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let on_disk = |dest: &str, reason: String| RecoverError::Destination {
        dest: dest.into(),
        reason,
    };
    let check = |name: &str, host_dir: &str, keep: Option<&dyn Fn(&Path) -> bool>| {
        let dest = if keep.is_some() {
            destination(cfg, host_dir)?
        } else {
            root.resolve_dir(host_dir)
                .map_err(|e| on_disk(host_dir, e.to_string()))?
        };
        let opts = RestoreOptions {
            jail: root.path(),
            allow_absolute_symlinks: true,
            mirror_keep: keep,
            host_paths: host_dir == "/",
        };
        archive::check_listing(&backup.join(name), &dest, &opts)
            .map(|listing| (dest, listing))
            .map_err(|e| match e {
                ArchiveError::OnDisk { .. } => on_disk(host_dir, e.to_string()),
                e => RecoverError::Archive {
                    name: name.into(),
                    reason: e.to_string(),
                },
            })
    };
    let keep_etc = |rel: &Path| crate::backup::layout::is_excluded(&exclusions, rel);
    if manifest.trees.is_empty() {
        rep.say(&format!(
            "this backup's manifest records no entry counts (taken by an older talm-agent): no sanity floor applies to the restores of {}",
            mirrored_dirs()
        ));
    }
    let mut entries = Vec::new();
    for (_, base, host_dir, mirror) in RESTORES {
        let name = artifact_name(manifest, &format!("{base}.tar")).ok_or_else(|| {
            RecoverError::Archive {
                name: format!("{base}.tar*"),
                reason: format!("the manifest lists no {base} archive (the content of {host_dir})"),
            }
        })?;
        let keep_none = |_: &Path| false;
        let keep: &dyn Fn(&Path) -> bool = if base == "etc" { &keep_etc } else { &keep_none };
        let (dest, listing) = check(name, host_dir, mirror.then_some(keep))?;
        let layout = if mirror {
            mirror_layout(host_dir, &dest, &listing.names, keep)
        } else {
            extras_layout(&listing.names)
        };
        layout.map_err(|reason| RecoverError::Archive {
            name: name.into(),
            reason,
        })?;
        if mirror {
            floor(cfg, rep, manifest, name, host_dir, &listing)?;
        }
        entries.push((base, listing.names.len()));
    }
    let missing = |what: &str, prefix: &str| RecoverError::Archive {
        name: format!("{prefix}*"),
        reason: format!("the manifest lists no {what}, which cluster-restore.sh needs"),
    };
    artifact_name(manifest, SNAPSHOT).ok_or_else(|| missing("etcd snapshot", SNAPSHOT))?;
    let name = artifact_name(manifest, STATIC_PODS_ARCHIVE)
        .ok_or_else(|| missing("static-pod resources", STATIC_PODS_ARCHIVE))?;
    let (_, listing) = check(name, STATIC_PODS_DEST, None)?;
    if let Some(n) = listing
        .names
        .iter()
        .find(|n| !n.starts_with(STATIC_PODS_TOP))
    {
        return Err(RecoverError::Archive {
            name: name.into(),
            reason: format!(
                "entry {} is not under {STATIC_PODS_TOP}/ (cluster-restore.sh unpacks it into {STATIC_PODS_DEST})",
                n.display()
            ),
        });
    }
    Ok(Checked {
        exclusions,
        entries,
    })
}

/// What the preflight found.
pub(super) struct Checked {
    /// The `/etc` exclusions.
    pub(super) exclusions: Vec<String>,
    /// Entries of each restore's archive, by archive base name.
    pub(super) entries: Vec<(&'static str, usize)>,
}

/// The mirrored host directories, for messages.
fn mirrored_dirs() -> String {
    RESTORES
        .iter()
        .filter(|r| r.3)
        .map(|r| r.2)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sanity floor of a mirrored restore: the archive must hold at least half the entries and
/// half the bytes of file data the backup recorded for its tree when it wrote it (a restore
/// deletes what the archive does not hold, so an archive far below that would wipe most of the
/// tree). `--force` restores it anyway, saying so. A tree the manifest records nothing for (a
/// backup by an older agent) has no floor, which is said too.
fn floor(
    cfg: &RecoverConfig,
    rep: &dyn Reporter,
    manifest: &Manifest,
    name: &str,
    host_dir: &str,
    listing: &archive::Listing,
) -> Result<(), RecoverError> {
    let Some(recorded) = manifest.tree(host_dir) else {
        if !manifest.trees.is_empty() {
            rep.say(&format!(
                "the manifest records no entry count for {host_dir}: no sanity floor applies to its restore"
            ));
        }
        return Ok(());
    };
    let entries = u64::try_from(listing.names.len()).unwrap_or(u64::MAX);
    let below = entries.saturating_mul(2) < recorded.entries
        || listing.bytes.saturating_mul(2) < recorded.bytes;
    if !below {
        return Ok(());
    }
    let err = RecoverError::BelowFloor {
        name: name.into(),
        dir: host_dir.into(),
        entries,
        bytes: listing.bytes,
        recorded_entries: recorded.entries,
        recorded_bytes: recorded.bytes,
    };
    if cfg.force {
        rep.say(&format!(
            "--force: backup archive {name} holds {entries} entries and {} bytes of file data, below the sanity floor (half of the {} entries and {} bytes recorded for {host_dir}); restoring it anyway",
            listing.bytes, recorded.entries, recorded.bytes
        ));
        Ok(())
    } else {
        Err(err)
    }
}

/// Where the mirrored restore of `host_dir` writes: the directory resolved inside the host root
/// as the host resolves it ([`crate::host::root::resolve_in_root`]; `/usr/local` is
/// `<root>/var/usrlocal` on RHCOS), which must be a place of its own: not the root itself, and
/// neither holding nor held by another mirrored destination or the recovery directory (the
/// mirror deletes what its archive does not hold). A link that leads elsewhere inside the root
/// is followed as the host follows it; one that leads to nothing is refused.
pub(super) fn destination(cfg: &RecoverConfig, host_dir: &str) -> Result<PathBuf, RecoverError> {
    let root = &cfg.host.root;
    let refuse = |reason: String| RecoverError::Destination {
        dest: host_dir.into(),
        reason,
    };
    let dest = root
        .resolve_dir(host_dir)
        .map_err(|e| refuse(e.to_string()))?;
    let shown = if dest == root.join(host_dir) {
        dest.display().to_string()
    } else {
        format!("it resolves through symlinks to {}, which", dest.display())
    };
    if dest == root.path() {
        return Err(refuse(format!(
            "{shown} is the host root itself; a mirrored restore there would delete everything its archive does not hold"
        )));
    }
    let recovery_dir = cfg.dir.display().to_string();
    let others = RESTORES
        .iter()
        .filter(|(_, _, other, mirror)| *mirror && *other != host_dir)
        .map(|(_, _, other, _)| (*other, other.to_string()))
        .chain([(
            recovery_dir.as_str(),
            format!("the recovery directory {recovery_dir}"),
        )]);
    for (other, what) in others {
        // One that does not resolve is refused by its own check.
        let Ok(at) = root.resolve_dir(other) else {
            continue;
        };
        let clash = if at.starts_with(&dest) {
            "holds"
        } else if dest.starts_with(&at) {
            "is inside"
        } else {
            continue;
        };
        return Err(refuse(format!(
            "{shown} {clash} {what} ({}); a mirrored restore of {host_dir} must not reach it",
            at.display()
        )));
    }
    Ok(dest)
}

/// The layout of a mirrored tree's archive: the tree's content (not the directory itself), and
/// not empty when the live tree holds something the mirror would delete.
fn mirror_layout(
    host_dir: &str,
    dest: &Path,
    names: &[PathBuf],
    keep: &dyn Fn(&Path) -> bool,
) -> Result<(), String> {
    if names.is_empty() {
        let mut live: Vec<String> = match std::fs::read_dir(dest) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .filter(|n| !keep(Path::new(n)))
                .map(|n| n.to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("{}: {e}", dest.display())),
        };
        live.sort();
        if !live.is_empty() {
            let more = if live.len() > 3 { ", ..." } else { "" };
            return Err(format!(
                "the archive is empty, but {host_dir} is not (it holds {}{more}); restoring it would delete all of that",
                live[..live.len().min(3)].join(", ")
            ));
        }
        return Ok(());
    }
    let top = Path::new(host_dir).file_name().unwrap_or_default();
    let wrapped = names
        .iter()
        .all(|n| n.components().next().is_some_and(|c| c.as_os_str() == top));
    if wrapped {
        return Err(format!(
            "every entry is under the top-level directory `{}/`: the archive holds the directory itself, not the content of {host_dir}",
            top.to_string_lossy()
        ));
    }
    Ok(())
}

/// The layout of the extras archive: only paths outside the trees that have their own archive
/// (which the backup leaves out of it, and whose exclusions it would bypass).
fn extras_layout(names: &[PathBuf]) -> Result<(), String> {
    for n in names {
        let host = Path::new("/").join(n);
        if let Some((tree, _)) = TREES.iter().find(|(tree, _)| host.starts_with(tree)) {
            return Err(format!(
                "entry {} is under {tree}, which its own archive restores; the extras hold only MachineConfig files outside {}",
                n.display(),
                TREES.map(|(t, _)| t).join(", ")
            ));
        }
    }
    Ok(())
}
