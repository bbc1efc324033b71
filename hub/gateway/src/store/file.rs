//! File-backed stores under `--state-dir`. Every write is atomic and durable
//! ([`talm_shared::fsutil::atomic_write`]); read-modify-write of enrollment state happens under
//! an exclusive `flock` on `enrollment/.lock`, so `talm-hub agents token|revoke` can run while
//! the gateway is up. The I/O is blocking, so each store call runs on tokio's blocking pool
//! (callers need a tokio runtime).
//!
//! Layout:
//! ```text
//! <state-dir>/enrollment/tokens/<id>.json      TokenRecord (secret hashed)
//! <state-dir>/enrollment/clusters/<name>.json  Enrollment
//! <state-dir>/spokeagents/<name>/spec.json     SpokeAgentSpec (written by the engine)
//! <state-dir>/spokeagents/<name>/status.json   SpokeAgentStatus (written by the gateway)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use serde::de::DeserializeOwned;
use talm_shared::api::spokeagent::{SpokeAgentSpec, SpokeAgentStatus};
use talm_shared::fsutil::{atomic_write, fsync_dir, read_optional};
use talm_shared::tls::check_cluster_name;

use super::{
    Enrollment, EnrollmentStore, KEPT_SERIALS, SpokeAgentStore, StoreError, StoreFuture,
    TokenRecord, TokenRejection, TokenUse,
};

/// Runs `f` (blocking file I/O) on tokio's blocking pool.
fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> StoreFuture<'static, T> {
    Box::pin(async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Backend {
                what: "file store".into(),
                message: format!("blocking task failed: {e}"),
            })?
    })
}

fn io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    match read_optional(path).map_err(|e| io(path, e))? {
        None => Ok(None),
        Some(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    path: path.display().to_string(),
                    source,
                })
        }
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Corrupt {
        path: path.display().to_string(),
        source,
    })?;
    atomic_write(path, &bytes, 0o600).map_err(|e| io(path, e))
}

fn cluster_name(name: &str) -> Result<(), StoreError> {
    check_cluster_name(name).map_err(StoreError::InvalidName)
}

fn token_id(id: &str) -> Result<(), StoreError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(StoreError::InvalidName(format!("invalid token id {id:?}")));
    }
    Ok(())
}

/// A cache entry keyed by file identity, so unchanged files are not re-read.
#[derive(Debug, Clone)]
struct Cached<T> {
    mtime: SystemTime,
    len: u64,
    value: T,
}

fn cached_dir_read<T: DeserializeOwned + Clone>(
    cache: &Mutex<HashMap<String, Cached<T>>>,
    entries: Vec<(String, PathBuf)>,
) -> Result<BTreeMap<String, T>, StoreError> {
    let mut out = BTreeMap::new();
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    for (name, path) in entries {
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path, e)),
        };
        let mtime = meta.modified().map_err(|e| io(&path, e))?;
        let len = meta.len();
        let hit = cache
            .get(&name)
            .filter(|c| c.mtime == mtime && c.len == len)
            .map(|c| c.value.clone());
        let value = match hit {
            Some(v) => v,
            None => match read_json::<T>(&path)? {
                Some(v) => {
                    cache.insert(
                        name.clone(),
                        Cached {
                            mtime,
                            len,
                            value: v.clone(),
                        },
                    );
                    v
                }
                None => continue,
            },
        };
        out.insert(name, value);
    }
    cache.retain(|k, _| out.contains_key(k));
    Ok(out)
}

/// [`EnrollmentStore`] on files.
#[derive(Debug, Clone)]
pub struct FileEnrollmentStore {
    files: Arc<EnrollmentFiles>,
}

impl FileEnrollmentStore {
    /// A store rooted at `<state_dir>/enrollment`; creates the directories.
    pub fn new(state_dir: &Path) -> Result<Self, StoreError> {
        let root = state_dir.join("enrollment");
        for d in [root.join("tokens"), root.join("clusters")] {
            fs::create_dir_all(&d).map_err(|e| io(&d, e))?;
        }
        Ok(Self {
            files: Arc::new(EnrollmentFiles {
                root,
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl EnrollmentStore for FileEnrollmentStore {
    fn add_token<'a>(&'a self, token: &'a TokenRecord) -> StoreFuture<'a, ()> {
        let (files, token) = (self.files.clone(), token.clone());
        blocking(move || files.add_token(&token))
    }

    fn consume_token<'a>(
        &'a self,
        id: &'a str,
        secret_sha256: &'a str,
        csr_sha256: &'a str,
        now: i64,
    ) -> StoreFuture<'a, Result<String, TokenRejection>> {
        let files = self.files.clone();
        let (id, secret, csr) = (
            id.to_owned(),
            secret_sha256.to_owned(),
            csr_sha256.to_owned(),
        );
        blocking(move || files.consume_token(&id, &secret, &csr, now))
    }

    fn record_certificate<'a>(
        &'a self,
        cluster: &'a str,
        serial: &'a str,
        not_after: i64,
        now: i64,
    ) -> StoreFuture<'a, ()> {
        let files = self.files.clone();
        let (cluster, serial) = (cluster.to_owned(), serial.to_owned());
        blocking(move || files.record_certificate(&cluster, &serial, not_after, now))
    }

    fn get<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, Option<Enrollment>> {
        let (files, cluster) = (self.files.clone(), cluster.to_owned());
        blocking(move || files.get(&cluster))
    }

    fn list(&self) -> StoreFuture<'_, BTreeMap<String, Enrollment>> {
        let files = self.files.clone();
        blocking(move || files.list())
    }

    fn revoke<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, bool> {
        let (files, cluster) = (self.files.clone(), cluster.to_owned());
        blocking(move || files.revoke(&cluster))
    }
}

/// The enrollment files (blocking).
#[derive(Debug)]
struct EnrollmentFiles {
    root: PathBuf,
    cache: Mutex<HashMap<String, Cached<Enrollment>>>,
}

impl EnrollmentFiles {
    fn lock(&self) -> Result<File, StoreError> {
        let p = self.root.join(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| io(&p, e))?;
        f.lock().map_err(|e| io(&p, e))?;
        Ok(f)
    }

    fn token_path(&self, id: &str) -> PathBuf {
        self.root.join("tokens").join(format!("{id}.json"))
    }

    fn cluster_path(&self, cluster: &str) -> PathBuf {
        self.root.join("clusters").join(format!("{cluster}.json"))
    }

    fn add_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        token_id(&token.id)?;
        cluster_name(&token.cluster)?;
        let _guard = self.lock()?;
        write_json(&self.token_path(&token.id), token)
    }

    fn consume_token(
        &self,
        id: &str,
        secret_sha256: &str,
        csr_sha256: &str,
        now: i64,
    ) -> Result<Result<String, TokenRejection>, StoreError> {
        if token_id(id).is_err() {
            return Ok(Err(TokenRejection::Unknown));
        }
        let _guard = self.lock()?;
        let path = self.token_path(id);
        let Some(mut t) = read_json::<TokenRecord>(&path)? else {
            return Ok(Err(TokenRejection::Unknown));
        };
        match t.consume(secret_sha256, csr_sha256, now) {
            TokenUse::Rejected(r) => Ok(Err(r)),
            TokenUse::Retried(cluster) => Ok(Ok(cluster)),
            TokenUse::Consumed(cluster) => {
                write_json(&path, &t)?;
                Ok(Ok(cluster))
            }
        }
    }

    fn record_certificate(
        &self,
        cluster: &str,
        serial: &str,
        not_after: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        cluster_name(cluster)?;
        let _guard = self.lock()?;
        let path = self.cluster_path(cluster);
        let mut e = read_json::<Enrollment>(&path)?.unwrap_or(Enrollment {
            cluster: cluster.to_string(),
            serials: Vec::new(),
            not_after,
            enrolled_at: now,
        });
        e.serials.retain(|s| s != serial);
        e.serials.insert(0, serial.to_string());
        e.serials.truncate(KEPT_SERIALS);
        e.not_after = not_after;
        write_json(&path, &e)
    }

    fn get(&self, cluster: &str) -> Result<Option<Enrollment>, StoreError> {
        if check_cluster_name(cluster).is_err() {
            return Ok(None);
        }
        read_json(&self.cluster_path(cluster))
    }

    fn list(&self) -> Result<BTreeMap<String, Enrollment>, StoreError> {
        let dir = self.root.join("clusters");
        let mut entries = Vec::new();
        for ent in fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let ent = ent.map_err(|e| io(&dir, e))?;
            let name = ent.file_name().to_string_lossy().to_string();
            if let Some(cluster) = name.strip_suffix(".json")
                && check_cluster_name(cluster).is_ok()
            {
                entries.push((cluster.to_string(), ent.path()));
            }
        }
        cached_dir_read(&self.cache, entries)
    }

    fn revoke(&self, cluster: &str) -> Result<bool, StoreError> {
        cluster_name(cluster)?;
        let _guard = self.lock()?;
        let tokens = self.root.join("tokens");
        for ent in fs::read_dir(&tokens).map_err(|e| io(&tokens, e))? {
            let ent = ent.map_err(|e| io(&tokens, e))?;
            if let Ok(Some(t)) = read_json::<TokenRecord>(&ent.path())
                && t.cluster == cluster
                && t.used_at.is_none()
            {
                fs::remove_file(ent.path()).map_err(|e| io(&ent.path(), e))?;
            }
        }
        let path = self.cluster_path(cluster);
        match fs::remove_file(&path) {
            Ok(()) => {
                fsync_dir(&self.root.join("clusters")).map_err(|e| io(&path, e))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&path, e)),
        }
    }
}

/// [`SpokeAgentStore`] on files.
#[derive(Debug, Clone)]
pub struct FileSpokeAgentStore {
    files: Arc<SpokeAgentFiles>,
}

impl FileSpokeAgentStore {
    /// A store rooted at `<state_dir>/spokeagents`; creates the directory.
    pub fn new(state_dir: &Path) -> Result<Self, StoreError> {
        let root = state_dir.join("spokeagents");
        fs::create_dir_all(&root).map_err(|e| io(&root, e))?;
        Ok(Self {
            files: Arc::new(SpokeAgentFiles {
                root,
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl SpokeAgentStore for FileSpokeAgentStore {
    fn specs(&self) -> StoreFuture<'_, BTreeMap<String, SpokeAgentSpec>> {
        let files = self.files.clone();
        blocking(move || files.specs())
    }

    fn spec<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, Option<SpokeAgentSpec>> {
        let (files, cluster) = (self.files.clone(), cluster.to_owned());
        blocking(move || read_json(&files.dir(&cluster)?.join("spec.json")))
    }

    fn put_spec<'a>(&'a self, cluster: &'a str, spec: &'a SpokeAgentSpec) -> StoreFuture<'a, ()> {
        let (files, cluster, spec) = (self.files.clone(), cluster.to_owned(), spec.clone());
        blocking(move || write_json(&files.dir(&cluster)?.join("spec.json"), &spec))
    }

    fn status<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, Option<SpokeAgentStatus>> {
        let (files, cluster) = (self.files.clone(), cluster.to_owned());
        blocking(move || read_json(&files.dir(&cluster)?.join("status.json")))
    }

    fn write_status<'a>(
        &'a self,
        cluster: &'a str,
        status: &'a SpokeAgentStatus,
    ) -> StoreFuture<'a, ()> {
        let (files, cluster, status) = (self.files.clone(), cluster.to_owned(), status.clone());
        blocking(move || write_json(&files.dir(&cluster)?.join("status.json"), &status))
    }
}

/// The SpokeAgent files (blocking).
#[derive(Debug)]
struct SpokeAgentFiles {
    root: PathBuf,
    cache: Mutex<HashMap<String, Cached<SpokeAgentSpec>>>,
}

impl SpokeAgentFiles {
    fn dir(&self, cluster: &str) -> Result<PathBuf, StoreError> {
        cluster_name(cluster)?;
        Ok(self.root.join(cluster))
    }

    fn specs(&self) -> Result<BTreeMap<String, SpokeAgentSpec>, StoreError> {
        let mut entries = Vec::new();
        for ent in fs::read_dir(&self.root).map_err(|e| io(&self.root, e))? {
            let ent = ent.map_err(|e| io(&self.root, e))?;
            let name = ent.file_name().to_string_lossy().to_string();
            if check_cluster_name(&name).is_ok() {
                entries.push((name, ent.path().join("spec.json")));
            }
        }
        cached_dir_read(&self.cache, entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str, cluster: &str, hash: &str, expires_at: i64) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            cluster: cluster.into(),
            secret_sha256: hash.into(),
            expires_at,
            used_at: None,
            used_by: None,
        }
    }

    #[tokio::test]
    async fn a_token_is_consumed_once_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileEnrollmentStore::new(dir.path()).unwrap();
        s.add_token(&token("abc", "sno1", "h1", 100)).await.unwrap();
        s.add_token(&token("old", "sno1", "h2", 100)).await.unwrap();
        assert_eq!(
            s.consume_token("abc", "nope", "csr1", 10).await.unwrap(),
            Err(TokenRejection::WrongSecret)
        );
        assert_eq!(
            s.consume_token("abc", "h1", "csr1", 10).await.unwrap(),
            Ok("sno1".to_string())
        );
        assert_eq!(
            s.consume_token("abc", "h1", "other-csr", 11).await.unwrap(),
            Err(TokenRejection::Used)
        );
        assert_eq!(
            s.consume_token("old", "h2", "csr1", 100).await.unwrap(),
            Err(TokenRejection::Expired)
        );
        assert_eq!(
            s.consume_token("zzz", "h2", "csr1", 1).await.unwrap(),
            Err(TokenRejection::Unknown)
        );
        assert_eq!(
            s.consume_token("../x", "h2", "csr1", 1).await.unwrap(),
            Err(TokenRejection::Unknown)
        );
        // The same CSR may retry (a lost answer); another may not.
        assert_eq!(
            s.consume_token("abc", "h1", "csr1", 13).await.unwrap(),
            Ok("sno1".to_string())
        );
        assert_eq!(
            s.consume_token("abc", "h1", "csr2", 13).await.unwrap(),
            Err(TokenRejection::Used)
        );
        // A second store over the same directory (another process) sees the same state.
        let s2 = FileEnrollmentStore::new(dir.path()).unwrap();
        assert_eq!(
            s2.consume_token("abc", "h1", "csr9", 12).await.unwrap(),
            Err(TokenRejection::Used)
        );
    }

    #[tokio::test]
    async fn certificates_rotate_and_revocation_removes_the_enrollment() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileEnrollmentStore::new(dir.path()).unwrap();
        s.record_certificate("sno1", "01", 50, 1).await.unwrap();
        s.record_certificate("sno1", "02", 60, 2).await.unwrap();
        s.record_certificate("sno1", "03", 70, 3).await.unwrap();
        let e = s.get("sno1").await.unwrap().unwrap();
        assert_eq!(e.serials, vec!["03", "02"]);
        assert_eq!((e.not_after, e.enrolled_at), (70, 1));
        assert_eq!(s.list().await.unwrap().len(), 1);
        s.add_token(&token("t1", "sno1", "h", 99)).await.unwrap();
        assert!(s.revoke("sno1").await.unwrap());
        assert!(!s.revoke("sno1").await.unwrap());
        assert_eq!(s.get("sno1").await.unwrap(), None);
        assert!(s.list().await.unwrap().is_empty());
        assert_eq!(
            s.consume_token("t1", "h", "csr1", 1).await.unwrap(),
            Err(TokenRejection::Unknown)
        );
    }

    #[tokio::test]
    async fn spokeagent_spec_and_status_are_separate_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileSpokeAgentStore::new(dir.path()).unwrap();
        assert!(s.specs().await.unwrap().is_empty());
        let spec = SpokeAgentSpec::default();
        s.put_spec("sno1", &spec).await.unwrap();
        let st = SpokeAgentStatus {
            connected: true,
            ..Default::default()
        };
        s.write_status("sno1", &st).await.unwrap();
        assert_eq!(s.specs().await.unwrap().get("sno1"), Some(&spec));
        assert_eq!(s.status("sno1").await.unwrap(), Some(st));
        assert!(s.put_spec("../etc", &spec).await.is_err());
    }
}
