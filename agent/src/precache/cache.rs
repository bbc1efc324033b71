//! The blob cache: a content-addressed store that is itself an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/<hex>`), so `skopeo copy oci:<dir>:<ref>` imports
//! from it directly.
//!
//! - A download goes to `blobs/sha256/<hex>.partial`. An interrupted download keeps its partial
//!   file; the next attempt re-hashes what is there and continues from its length (an HTTP
//!   Range request, see [`super::pull`]).
//! - [`Partial::commit`] checks the size and the sha256 against the descriptor, fsyncs the
//!   file, renames it into place, fsyncs the directory and records the blob as verified; a
//!   mismatch deletes the partial. A blob under its final name is still checked before it is
//!   used ([`super::verify`]): anything could have written there since.
//! - Manifests are stored only once they are verified and understood ([`Cache::put_bytes`]
//!   replaces a stored copy whose bytes differ).
//! - `index.json` names the cached images (`org.opencontainers.image.ref.name`); updates are
//!   serialized and atomic (temp file + rename).
//! - One process at a time: [`Cache::open`] takes an exclusive `flock` on `<dir>/.lock`,
//!   released when the [`Cache`] is dropped or the process dies.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use talm_shared::hex;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// The annotation that names an image in an OCI layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A digest is not `sha256:<64 hex digits>`.
    #[error("unsupported digest {0:?} (only sha256 is supported)")]
    BadDigest(String),
    /// The content does not hash to its digest, or has the wrong size.
    #[error("blob {digest}: {detail}; the partial download was deleted")]
    Mismatch {
        /// The expected digest.
        digest: String,
        /// What differed.
        detail: String,
    },
    /// Another process uses the cache.
    #[error("{0}: the cache is in use by another pre-cache run")]
    Locked(String),
    /// `index.json` is not an OCI index.
    #[error("{path}: {detail}")]
    BadIndex {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A validated sha256 digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex digits>` (anything else is refused: the hex part becomes
    /// a file name).
    pub fn parse(s: &str) -> Result<Self, CacheError> {
        match s.strip_prefix("sha256:") {
            Some(hex)
                if hex.len() == 64
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                Ok(Self(s.to_string()))
            }
            _ => Err(CacheError::BadDigest(s.to_string())),
        }
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(format!(
            "sha256:{}",
            hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
        ))
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An OCI descriptor (the fields the cache needs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    #[serde(default)]
    pub media_type: String,
    /// Digest.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Annotations.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// The cache directory.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    index_lock: tokio::sync::Mutex<()>,
    _lock: File,
}

impl Cache {
    /// Opens (creating it if needed) the layout at `dir` and locks it for this process.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let lock_path = dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| CacheError::Locked(dir.display().to_string()))?;
        let layout = dir.join("oci-layout");
        if !layout.exists() {
            talm_shared::fsutil::atomic_write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)
                .map_err(io_err(&layout))?;
        }
        let index = dir.join("index.json");
        if !index.exists() {
            write_index(&index, &Index::new())?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            index_lock: tokio::sync::Mutex::new(()),
            _lock: lock,
        })
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a complete blob lives.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    /// Where a blob being downloaded lives.
    pub fn partial_path(&self, d: &Digest) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(format!("{}.partial", d.hex()))
    }

    /// Whether a file of the blob's size is under its final name (a cheap estimate for progress
    /// figures; [`Cache::check_blob`] verifies the content before the blob is used).
    pub fn has_blob(&self, d: &Digest, size: u64) -> bool {
        std::fs::metadata(self.blob_path(d)).is_ok_and(|m| m.len() == size)
    }

    /// Bytes of the blob already downloaded (its partial file), 0 if none.
    pub fn partial_len(&self, d: &Digest) -> u64 {
        std::fs::metadata(self.partial_path(d)).map_or(0, |m| m.len())
    }

    /// Stores small content (a manifest) after checking it hashes to `d`. A stored copy is kept
    /// only when its bytes are the same (a copy of the right size but other content is
    /// replaced).
    pub async fn put_bytes(&self, d: &Digest, bytes: &[u8]) -> Result<(), CacheError> {
        if Digest::of(bytes) != *d {
            return Err(CacheError::Mismatch {
                digest: d.to_string(),
                detail: format!("content hashes to {}", Digest::of(bytes)),
            });
        }
        let path = self.blob_path(d);
        let bytes = bytes.to_vec();
        tokio::task::spawn_blocking(move || {
            let same = std::fs::symlink_metadata(&path)
                .is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64)
                && std::fs::read(&path).is_ok_and(|old| old == bytes);
            if same {
                return Ok(());
            }
            talm_shared::fsutil::atomic_write(&path, &bytes, 0o644).map_err(io_err(&path))
        })
        .await
        .map_err(|e| CacheError::Io {
            path: self.dir.display().to_string(),
            source: std::io::Error::other(e),
        })?
    }

    /// Reads a complete blob.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, CacheError> {
        let p = self.blob_path(d);
        std::fs::read(&p).map_err(io_err(&p))
    }

    /// Opens a complete blob for streaming.
    pub fn open_blob(&self, d: &Digest) -> Result<File, CacheError> {
        let p = self.blob_path(d);
        File::open(&p).map_err(io_err(&p))
    }

    /// Opens (or creates) the partial download of `d`, re-hashing what is already there. More
    /// bytes than `size` means the partial is bad: it is started over.
    pub async fn open_partial(&self, d: &Digest, size: u64) -> Result<Partial, CacheError> {
        let path = self.partial_path(d);
        let p2 = path.clone();
        let (hasher, len) = tokio::task::spawn_blocking(move || hash_prefix(&p2, size))
            .await
            .map_err(|e| CacheError::Io {
                path: path.display().to_string(),
                source: std::io::Error::other(e),
            })??;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .await
            .map_err(io_err(&path))?;
        file.set_len(len).await.map_err(io_err(&path))?;
        file.seek(std::io::SeekFrom::Start(len))
            .await
            .map_err(io_err(&path))?;
        Ok(Partial {
            file,
            hasher,
            len,
            digest: d.clone(),
            size,
            path,
            dest: self.blob_path(d),
            dir: self.dir.join("blobs/sha256"),
            marker: super::verify::marker_path(&self.dir, d),
        })
    }

    /// Names `desc` as `ref_name` in `index.json` (replacing an older entry of that name).
    pub async fn tag(&self, ref_name: &str, mut desc: Descriptor) -> Result<(), CacheError> {
        let _guard = self.index_lock.lock().await;
        let path = self.dir.join("index.json");
        let mut index = read_index(&path)?;
        index
            .manifests
            .retain(|m| m.annotations.get(REF_NAME).map(String::as_str) != Some(ref_name));
        desc.annotations
            .insert(REF_NAME.to_string(), ref_name.to_string());
        index.manifests.push(desc);
        let p2 = path.clone();
        tokio::task::spawn_blocking(move || write_index(&p2, &index))
            .await
            .map_err(|e| CacheError::Io {
                path: path.display().to_string(),
                source: std::io::Error::other(e),
            })?
    }

    /// The descriptor named `ref_name` in `index.json`, if any.
    pub fn tagged(&self, ref_name: &str) -> Result<Option<Descriptor>, CacheError> {
        let index = read_index(&self.dir.join("index.json"))?;
        Ok(index
            .manifests
            .into_iter()
            .find(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some(ref_name)))
    }
}

impl Index {
    fn new() -> Self {
        Self {
            schema_version: 2,
            media_type: Some("application/vnd.oci.image.index.v1+json".into()),
            manifests: Vec::new(),
        }
    }
}

fn read_index(path: &Path) -> Result<Index, CacheError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|e| CacheError::BadIndex {
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

fn write_index(path: &Path, index: &Index) -> Result<(), CacheError> {
    let bytes = serde_json::to_vec_pretty(index).map_err(|e| CacheError::BadIndex {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    talm_shared::fsutil::atomic_write(path, &bytes, 0o644).map_err(io_err(path))
}

/// Hashes the first bytes of a partial file (all of them, or none when there are more than
/// `size`).
fn hash_prefix(path: &Path, size: u64) -> Result<(ring::digest::Context, u64), CacheError> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((ctx, 0)),
        Err(e) => return Err(io_err(path)(e)),
    };
    let len = f.metadata().map_err(io_err(path))?.len();
    if len > size {
        return Ok((ctx, 0));
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut done = 0u64;
    while done < len {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        done += n as u64;
    }
    Ok((ctx, done))
}

/// A blob being downloaded.
pub struct Partial {
    file: tokio::fs::File,
    hasher: ring::digest::Context,
    len: u64,
    digest: Digest,
    size: u64,
    path: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
    marker: PathBuf,
}

impl std::fmt::Debug for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partial")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Partial {
    /// Bytes written so far (the offset to resume from).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The expected size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Drops what was written (the server ignored the Range request and sends everything).
    pub async fn restart(&mut self) -> Result<(), CacheError> {
        self.file.set_len(0).await.map_err(io_err(&self.path))?;
        self.file
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(io_err(&self.path))?;
        self.hasher = ring::digest::Context::new(&ring::digest::SHA256);
        self.len = 0;
        Ok(())
    }

    /// Appends a chunk. More bytes than the descriptor's size deletes the partial.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), CacheError> {
        let new_len = self.len + chunk.len() as u64;
        if new_len > self.size {
            self.discard().await;
            return Err(CacheError::Mismatch {
                digest: self.digest.to_string(),
                detail: format!(
                    "the registry sent more than the {} bytes of the descriptor",
                    self.size
                ),
            });
        }
        self.file
            .write_all(chunk)
            .await
            .map_err(io_err(&self.path))?;
        self.hasher.update(chunk);
        self.len = new_len;
        Ok(())
    }

    /// Makes sure what was written reached the file (before a retry re-opens it).
    pub async fn flush(&mut self) -> Result<(), CacheError> {
        self.file.flush().await.map_err(io_err(&self.path))
    }

    async fn discard(&mut self) {
        let _ = self.file.flush().await;
        let _ = tokio::fs::remove_file(&self.path).await;
    }

    /// Verifies size and digest, then moves the blob into place durably. On a mismatch the
    /// partial is deleted (the next attempt starts from zero).
    pub async fn commit(mut self) -> Result<(), CacheError> {
        if self.len != self.size {
            self.discard().await;
            return Err(CacheError::Mismatch {
                digest: self.digest.to_string(),
                detail: format!("got {} bytes, the descriptor says {}", self.len, self.size),
            });
        }
        let got = format!(
            "sha256:{}",
            hex::encode(self.hasher.clone().finish().as_ref())
        );
        if got != self.digest.as_str() {
            self.discard().await;
            return Err(CacheError::Mismatch {
                digest: self.digest.to_string(),
                detail: format!("digest mismatch: the content hashes to {got}"),
            });
        }
        self.file.flush().await.map_err(io_err(&self.path))?;
        self.file.sync_all().await.map_err(io_err(&self.path))?;
        tokio::fs::rename(&self.path, &self.dest)
            .await
            .map_err(io_err(&self.dest))?;
        let (dir, dest, marker) = (self.dir.clone(), self.dest.clone(), self.marker.clone());
        tokio::task::spawn_blocking(move || {
            talm_shared::fsutil::fsync_dir(&dir).map_err(io_err(&dir))?;
            // Best effort: without a marker the blob is hashed once more before its next use.
            if let Err(e) = super::verify::mark_verified(&dest, &marker) {
                tracing::warn!(marker = %marker.display(), error = %e, "cannot record a verified blob");
            }
            Ok(())
        })
        .await
        .map_err(|e| CacheError::Io {
            path: self.dir.display().to_string(),
            source: std::io::Error::other(e),
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_validated() {
        let d = Digest::of(b"hello");
        assert_eq!(
            d.as_str(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        for bad in [
            "sha512:00",
            "sha256:../../etc/passwd",
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
            "",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn layout_and_atomic_tagging() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path()).unwrap();
        assert!(dir.path().join("oci-layout").exists());
        let d = Digest::of(b"{}");
        c.put_bytes(&d, b"{}").await.unwrap();
        assert!(c.has_blob(&d, 2));
        assert!(c.put_bytes(&d, b"{ }").await.is_err());
        let desc = Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: d.to_string(),
            size: 2,
            ..Default::default()
        };
        c.tag("a:1", desc.clone()).await.unwrap();
        c.tag("b:1", desc.clone()).await.unwrap();
        c.tag("a:1", desc.clone()).await.unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
        assert_eq!(c.tagged("b:1").unwrap().unwrap().digest, d.to_string());
        // A second process (here: a second open) is refused while the first holds the lock.
        assert!(matches!(
            Cache::open(dir.path()),
            Err(CacheError::Locked(_))
        ));
        drop(c);
        assert!(Cache::open(dir.path()).is_ok());
    }

    #[tokio::test]
    async fn partial_downloads_resume_and_are_verified() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path()).unwrap();
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::of(&content);
        let mut p = c.open_partial(&d, content.len() as u64).await.unwrap();
        p.write(&content[..40_000]).await.unwrap();
        p.flush().await.unwrap();
        drop(p); // interrupted
        assert_eq!(c.partial_len(&d), 40_000);
        let mut p = c.open_partial(&d, content.len() as u64).await.unwrap();
        assert_eq!(p.len(), 40_000);
        p.write(&content[40_000..]).await.unwrap();
        p.commit().await.unwrap();
        assert!(c.has_blob(&d, content.len() as u64));
        assert_eq!(c.read_blob(&d).unwrap(), content);
        assert!(!c.partial_path(&d).exists());
    }

    #[tokio::test]
    async fn corrupt_content_is_rejected_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path()).unwrap();
        let d = Digest::of(b"good content");
        let mut p = c.open_partial(&d, 12).await.unwrap();
        p.write(b"evil content").await.unwrap();
        let e = p.commit().await.unwrap_err();
        assert!(
            matches!(&e, CacheError::Mismatch { digest, .. } if *digest == d.to_string()),
            "{e}"
        );
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        assert!(!c.partial_path(&d).exists());
        assert!(!c.blob_path(&d).exists());
        // Too many bytes fail at once.
        let mut p = c.open_partial(&d, 4).await.unwrap();
        assert!(p.write(b"12345").await.is_err());
        assert!(!c.partial_path(&d).exists());
        // A partial longer than the blob is started over.
        std::fs::write(c.partial_path(&d), b"0123456789abcdefgh").unwrap();
        let p = c.open_partial(&d, 12).await.unwrap();
        assert!(p.is_empty());
    }
}
