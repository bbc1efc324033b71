//! Cached blobs are checked before they are used (issue 14 item 8): a file under its final
//! name in the cache is not trusted because of its name or its size alone.
//!
//! - **Marker.** When a blob's content has been verified (at [`super::cache::Partial::commit`],
//!   or by hashing it here) the cache records the file's identity in
//!   `<cache>/.verified/<hex>`: size, device, inode, and the modification and change times in
//!   nanoseconds. Any later write to the blob, or a new file put in its place, changes its
//!   change time or inode (which users cannot set back), so the marker no longer matches. A
//!   marker is trusted only when it was written after the blob's last change (file times have
//!   a coarse clock: a change in the same tick as the marker is caught by hashing again).
//! - **Check.** [`Cache::check_blob`] accepts a blob whose marker matches (one `stat` and one
//!   small read); otherwise it hashes the whole file. A blob that is not a regular file, has
//!   the wrong size, or does not hash to its digest is removed together with its marker, and
//!   the caller downloads it again.
//!
//! A cache written by an earlier talm (no markers) is therefore hashed once, then trusted
//! through the markers.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use talm_shared::hex;

use super::cache::{Cache, CacheError, Digest};

/// The directory of the markers, under the cache directory.
pub const MARKER_DIR: &str = ".verified";

/// What [`Cache::check_blob`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobCheck {
    /// No blob under its final name.
    Missing,
    /// The blob is complete and its content is verified.
    Good,
    /// The file was bad and has been removed (the detail says why).
    Removed(String),
}

/// The identity of a file as the marker records it.
pub(crate) fn fingerprint(meta: &std::fs::Metadata) -> String {
    format!(
        "size={} dev={} ino={} mtime={}.{:09} ctime={}.{:09}\n",
        meta.len(),
        meta.dev(),
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

/// Where the marker of `d` lives in the cache at `cache_dir`.
pub(crate) fn marker_path(cache_dir: &Path, d: &Digest) -> PathBuf {
    cache_dir.join(MARKER_DIR).join(d.hex())
}

/// Records that `blob` (verified content) is good, as it is now on disk.
pub(crate) fn mark_verified(blob: &Path, marker: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(blob)?;
    if let Some(dir) = marker.parent() {
        std::fs::create_dir_all(dir)?;
    }
    talm_shared::fsutil::atomic_write(marker, fingerprint(&meta).as_bytes(), 0o644)
}

impl Cache {
    /// Checks the complete blob `d` of `size` bytes (see the module header). Blocking file I/O
    /// runs off the async threads.
    pub async fn check_blob(&self, d: &Digest, size: u64) -> Result<BlobCheck, CacheError> {
        let blob = self.blob_path(d);
        let marker = marker_path(self.dir(), d);
        let d2 = d.clone();
        let b2 = blob.clone();
        tokio::task::spawn_blocking(move || check(&b2, &marker, &d2, size))
            .await
            .map_err(|e| CacheError::Io {
                path: blob.display().to_string(),
                source: std::io::Error::other(e),
            })?
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn check(blob: &Path, marker: &Path, d: &Digest, size: u64) -> Result<BlobCheck, CacheError> {
    let meta = match std::fs::symlink_metadata(blob) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BlobCheck::Missing),
        Err(e) => return Err(io_err(blob)(e)),
    };
    let bad = if !meta.is_file() {
        Some("not a regular file".to_string())
    } else if meta.len() != size {
        Some(format!("{} bytes, the descriptor says {size}", meta.len()))
    } else if marker_holds(marker, &meta) {
        return Ok(BlobCheck::Good);
    } else {
        let got = hash_file(blob, size)?;
        if got == d.as_str() {
            // Best effort: without a marker the blob is only hashed again next time.
            if let Err(e) = mark_verified(blob, marker) {
                tracing::warn!(marker = %marker.display(), error = %e, "cannot record a verified blob");
            }
            return Ok(BlobCheck::Good);
        }
        Some(format!("the content hashes to {got}"))
    };
    let detail = bad.unwrap_or_default();
    remove(blob)?;
    remove(marker)?;
    Ok(BlobCheck::Removed(detail))
}

/// Whether the marker records the blob as it is now, and was written after the blob's last
/// change. File times come from a coarse clock (a few milliseconds): a write in the same tick
/// as the marker would leave the same times, so such a "racy" marker (as git calls it) is not
/// trusted and the blob is hashed again.
fn marker_holds(marker: &Path, blob: &std::fs::Metadata) -> bool {
    let Ok(m) = std::fs::symlink_metadata(marker) else {
        return false;
    };
    let after = (m.mtime(), m.mtime_nsec()) > (blob.ctime(), blob.ctime_nsec());
    after && std::fs::read(marker).is_ok_and(|text| text == fingerprint(blob).as_bytes())
}

fn remove(path: &Path) -> Result<(), CacheError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// `sha256:<hex>` of the first `size` bytes of `path` (a file of exactly `size` bytes).
fn hash_file(path: &Path, size: u64) -> Result<String, CacheError> {
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut f = f.take(size);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(ctx.finish().as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn poisoned_blobs_are_removed_and_good_ones_marked() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path()).unwrap();
        let content = b"the real layer".to_vec();
        let d = Digest::of(&content);
        let size = content.len() as u64;
        assert_eq!(c.check_blob(&d, size).await.unwrap(), BlobCheck::Missing);

        // Committed through a partial: verified and marked.
        let mut p = c.open_partial(&d, size).await.unwrap();
        p.write(&content).await.unwrap();
        p.commit().await.unwrap();
        assert!(marker_path(dir.path(), &d).exists());
        assert_eq!(c.check_blob(&d, size).await.unwrap(), BlobCheck::Good);

        // Same size, other content: the marker no longer matches, the hash fails, both go.
        std::fs::write(c.blob_path(&d), b"a fake layer!!").unwrap();
        match c.check_blob(&d, size).await.unwrap() {
            BlobCheck::Removed(why) => assert!(why.contains("hashes to"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(!c.blob_path(&d).exists());
        assert!(!marker_path(dir.path(), &d).exists());

        // A good blob without a marker (an older cache) is hashed once, then marked.
        std::fs::write(c.blob_path(&d), &content).unwrap();
        assert_eq!(c.check_blob(&d, size).await.unwrap(), BlobCheck::Good);
        assert!(marker_path(dir.path(), &d).exists());

        // The wrong size is removed without hashing.
        std::fs::write(c.blob_path(&d), b"short").unwrap();
        assert!(matches!(
            c.check_blob(&d, size).await.unwrap(),
            BlobCheck::Removed(w) if w.contains("5 bytes")
        ));
        assert!(!c.blob_path(&d).exists());
    }
}
