//! Making cached images usable by CRI-O: `skopeo copy oci:<cache>:<ref> containers-storage:…`
//! through the agent's single exec module.
//!
//! - **One image per skopeo, few at once.** skopeo 1.9 copies one image per process and no
//!   maintained tool here imports many images into containers-storage in one process while
//!   keeping their names (`skopeo sync` cannot write containers-storage; `podman pull oci:…` and
//!   `podman load` name images after the path or the archive's tags, losing by-digest names).
//!   An import is mostly containers-storage's own synced metadata writes (about 30 `fdatasync`s
//!   per image: `layers.json`, `images.json`, each big-data item, c/image's blob-info cache),
//!   done under the store's locks, which one long-lived importing process would pay as well. Each import is a skopeo (up to ~39 MiB RSS) plus, while it applies a layer, a
//!   re-executed skopeo child that unpacks it (about 13 MiB more); the run bounds them to
//!   [`super::IMPORT_PARALLEL`] imports at once by default (BENCHMARKS.md, Pre-caching, has
//!   the measurements). A lower Go GC target (`GOGC=25`) was measured and rejected: about a
//!   fifth less peak RSS per skopeo for about a third more CPU.
//! - **Shared layers once.** With several imports at once, an image waits while another import
//!   is bringing in one of its layers that this run has not imported yet ([`LayerGate`]); it
//!   then finds the layer in the storage and reuses it instead of decompressing and applying it
//!   a second time in parallel. Layers already imported never make an import wait.
//! - **Already present?** Read once per run from containers-storage's own metadata,
//!   `<graphroot>/<driver>-images/images.json` (the list c/storage keeps of its images: `names`,
//!   `digest`, `digests`). A tag reference is present when an image carries that exact name; a
//!   digest reference when an image of that repository has that manifest digest. This costs one
//!   file read instead of one `skopeo inspect` process per image; a storage that does not exist
//!   yet has no images. The file is c/storage's internal format, so a parse failure only means
//!   "not known to be present" (the image is imported again, which is harmless).
//! - **Low priority.** `skopeo` runs under `ionice -c3 nice -n 10` when both exist on `PATH`
//!   (the idle I/O class and a lower CPU priority; both inherit to skopeo's threads).
//!   `precache run` also lowers its own priority to nice 10 with `setpriority` before its
//!   runtime starts ([`lower_priority`]; every thread inherits it). The daemon does not lower
//!   itself (the hub channel shares its process): in a hub task only skopeo runs at low priority.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;

use super::sources::ImageRef;
use crate::host::exec::{Cmd, CommandRunner, ExecError};
use crate::host::root::HostRoot;

/// containers-storage as seen under the host root.
#[derive(Clone, Debug)]
pub struct Storage {
    /// Graph driver (`overlay` on nodes; tests use `vfs`).
    pub driver: String,
    /// The graph root (`<root>/var/lib/containers/storage`).
    pub graph_root: PathBuf,
    /// The run root (`<root>/run/containers/storage`).
    pub run_root: PathBuf,
}

impl Storage {
    /// The node's storage under `host_root`.
    pub fn under(host_root: &Path, driver: &str) -> Self {
        let root = HostRoot::new(host_root);
        Self {
            driver: driver.to_string(),
            graph_root: root.join("/var/lib/containers/storage"),
            run_root: root.join("/run/containers/storage"),
        }
    }

    /// `containers-storage:[driver@graph+run]name`.
    pub fn transport(&self, name: &str) -> String {
        format!(
            "containers-storage:[{}@{}+{}]{name}",
            self.driver,
            self.graph_root.display(),
            self.run_root.display()
        )
    }
}

#[derive(Debug, Deserialize)]
struct StoredImage {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    digests: Vec<String>,
}

/// What containers-storage holds, for the "already present" check.
#[derive(Debug, Default)]
pub struct Present {
    names: HashSet<String>,
    /// repository → manifest digests.
    digests: HashMap<String, HashSet<String>>,
}

impl Present {
    /// Reads `<graph>/<driver>-images/images.json` (empty when missing or unreadable).
    pub fn load(storage: &Storage) -> Self {
        let path = storage
            .graph_root
            .join(format!("{}-images", storage.driver))
            .join("images.json");
        let Ok(bytes) = std::fs::read(&path) else {
            return Self::default();
        };
        match serde_json::from_slice::<Vec<StoredImage>>(&bytes) {
            Ok(images) => Self::from_images(images),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read containers-storage's image list; assuming no image is present");
                Self::default()
            }
        }
    }

    fn from_images(images: Vec<StoredImage>) -> Self {
        let mut p = Self::default();
        for img in images {
            let mut ds: HashSet<String> = img.digests.into_iter().collect();
            if !img.digest.is_empty() {
                ds.insert(img.digest);
            }
            for n in img.names {
                if let Ok(r) = n.parse::<ImageRef>() {
                    p.digests
                        .entry(r.name())
                        .or_default()
                        .extend(ds.iter().cloned());
                    if let Some(d) = &r.digest {
                        p.digests.entry(r.name()).or_default().insert(d.clone());
                    }
                    p.names.insert(r.to_string());
                }
                p.names.insert(n);
            }
        }
        p
    }

    /// Whether `pull_spec` is in the storage.
    pub fn contains(&self, pull_spec: &str) -> bool {
        if self.names.contains(pull_spec) {
            return true;
        }
        let Ok(r) = pull_spec.parse::<ImageRef>() else {
            return false;
        };
        if self.names.contains(&r.to_string()) {
            return true;
        }
        match &r.digest {
            Some(d) => self.digests.get(&r.name()).is_some_and(|ds| ds.contains(d)),
            None => false,
        }
    }
}

/// Imports cached images into containers-storage.
#[derive(Debug, Clone)]
pub struct Importer {
    /// Runs skopeo.
    pub runner: Arc<dyn CommandRunner>,
    /// The storage to import into.
    pub storage: Storage,
    /// The cache layout directory.
    pub cache_dir: PathBuf,
    /// Wrap skopeo in `ionice -c3 nice -n 10`.
    pub low_priority: bool,
    /// The architecture to pick from a cached manifest list.
    pub arch: String,
}

impl Importer {
    /// The skopeo command that imports `name` (cached under `ref_name`).
    pub fn command(&self, name: &str, ref_name: &str) -> Cmd {
        let skopeo_args: Vec<String> = vec![
            "copy".into(),
            "--quiet".into(),
            "--override-os".into(),
            "linux".into(),
            "--override-arch".into(),
            self.arch.clone(),
            format!("oci:{}:{ref_name}", self.cache_dir.display()),
            self.storage.transport(name),
        ];
        let cmd = if self.low_priority {
            Cmd::new("ionice")
                .args(["-c3", "nice", "-n", "10", "skopeo"])
                .args(skopeo_args)
        } else {
            Cmd::new("skopeo").args(skopeo_args)
        };
        cmd.timeout(Some(Duration::from_secs(3600)))
    }

    /// Imports one image (blocking: run it on a blocking thread).
    pub fn import(&self, name: &str, ref_name: &str) -> Result<(), ExecError> {
        self.runner.run(&self.command(name, ref_name)).map(drop)
    }
}

/// The layers being imported right now. An import [enters](LayerGate::enter) with its layer
/// digests and waits while any of them is held by another import; it holds those not yet
/// imported by this run until its [`LayerPass`] is dropped, and a [landed](LayerPass::landed)
/// pass marks them imported (they are then in the storage and never make an import wait
/// again). All of an image's layers are taken at once (never some, then waiting for the rest),
/// so two imports cannot wait for each other.
#[derive(Debug, Default)]
pub struct LayerGate {
    state: Mutex<GateState>,
    freed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct GateState {
    /// Held by a running import.
    busy: HashSet<String>,
    /// Imported by this run.
    landed: HashSet<String>,
}

/// Held while an import runs; releases its layers when dropped.
#[derive(Debug)]
pub struct LayerPass {
    gate: Arc<LayerGate>,
    layers: Vec<String>,
    landed: bool,
}

impl LayerGate {
    /// Waits until none of `layers` is held by another import, then holds the ones this run
    /// has not imported yet.
    pub async fn enter(self: &Arc<Self>, layers: &[String]) -> LayerPass {
        let mut layers = layers.to_vec();
        layers.sort();
        layers.dedup();
        loop {
            // Registered before the check, so a release between the check and the wait is
            // not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                if !layers.iter().any(|l| st.busy.contains(l)) {
                    layers.retain(|l| !st.landed.contains(l));
                    st.busy.extend(layers.iter().cloned());
                    return LayerPass {
                        gate: self.clone(),
                        layers,
                        landed: false,
                    };
                }
            }
            freed.await;
        }
    }

    /// How many layers are held now.
    pub fn held(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .busy
            .len()
    }
}

impl LayerPass {
    /// The import succeeded: its layers are in the storage.
    pub fn landed(mut self) {
        self.landed = true;
    }
}

impl Drop for LayerPass {
    fn drop(&mut self) {
        let mut st = self
            .gate
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for l in &self.layers {
            st.busy.remove(l);
            if self.landed {
                st.landed.insert(l.clone());
            }
        }
        drop(st);
        self.gate.freed.notify_waiters();
    }
}

/// Lowers this process's CPU priority to nice 10 (pre-caching yields to the node's workload).
/// Failing to (an unprivileged agent already at a lower priority) is only logged.
pub fn lower_priority() {
    match rustix::process::getpriority_process(None) {
        Ok(cur) if cur >= 10 => {}
        _ => {
            if let Err(e) = rustix::process::setpriority_process(None, 10) {
                tracing::debug!(error = %e, "cannot lower the agent's priority");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::exec::RecordingRunner;

    #[test]
    fn presence_from_the_storage_image_list() {
        let d = format!("sha256:{}", "b".repeat(64));
        let other = format!("sha256:{}", "c".repeat(64));
        let images = vec![
            StoredImage {
                names: vec!["r.io/a/app:v1".into()],
                digest: other.clone(),
                digests: vec![],
            },
            StoredImage {
                names: vec![format!("r.io/a/rel@{d}")],
                digest: d.clone(),
                digests: vec![d.clone()],
            },
        ];
        let p = Present::from_images(images);
        assert!(p.contains("r.io/a/app:v1"));
        assert!(!p.contains("r.io/a/app:v2"));
        assert!(p.contains(&format!("r.io/a/rel@{d}")));
        assert!(p.contains(&format!("r.io/a/app@{other}")));
        assert!(!p.contains(&format!("r.io/a/rel@{other}")));
        assert!(!p.contains(&format!("r.io/b/rel@{d}")));
    }

    #[test]
    fn missing_storage_has_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::under(dir.path(), "vfs");
        assert!(!Present::load(&s).contains("r.io/a/app:v1"));
        std::fs::create_dir_all(s.graph_root.join("vfs-images")).unwrap();
        std::fs::write(s.graph_root.join("vfs-images/images.json"), "not json").unwrap();
        assert!(!Present::load(&s).contains("r.io/a/app:v1"));
    }

    #[test]
    fn skopeo_command_line() {
        let runner = Arc::new(RecordingRunner::new());
        let imp = Importer {
            runner: runner.clone(),
            storage: Storage::under(Path::new("/h"), "vfs"),
            cache_dir: "/s/precache/oci".into(),
            low_priority: true,
            arch: "amd64".into(),
        };
        imp.import("r.io/a/app:v1", "r.io/a/app:v1").unwrap();
        assert_eq!(
            runner.lines(),
            [
                "ionice -c3 nice -n 10 skopeo copy --quiet --override-os linux --override-arch amd64 \
              oci:/s/precache/oci:r.io/a/app:v1 \
              containers-storage:[vfs@/h/var/lib/containers/storage+/h/run/containers/storage]r.io/a/app:v1"
            ]
        );
    }

    fn layers(ls: &[&str]) -> Vec<String> {
        ls.iter().map(|l| (*l).to_string()).collect()
    }

    #[tokio::test]
    async fn an_import_waits_for_a_shared_layer_then_gets_it() {
        use futures_util::FutureExt;
        let gate = Arc::new(LayerGate::default());
        let first = gate.enter(&layers(&["base", "a"])).await;
        // Disjoint layers go in at once.
        let other = gate
            .enter(&layers(&["c", "c"]))
            .now_or_never()
            .expect("disjoint layers must not wait");
        assert_eq!(gate.held(), 3);
        // A second image on the same base waits while the first holds it.
        let wanted = layers(&["b", "base"]);
        let mut second = Box::pin(gate.enter(&wanted));
        assert!(second.as_mut().now_or_never().is_none());
        drop(other);
        assert!(second.as_mut().now_or_never().is_none());
        // The first import failed: its layers are still to import, so the second holds them.
        drop(first);
        let pass = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("released layers wake the waiting import");
        assert_eq!(pass.layers, ["b", "base"]);
        // Once an import has landed, its layers are in the storage: later images sharing them
        // neither wait nor hold them, so they import side by side.
        pass.landed();
        assert_eq!(gate.held(), 0);
        let third = gate.enter(&layers(&["base", "b", "d"])).await;
        let fourth = gate
            .enter(&layers(&["base", "b", "e"]))
            .now_or_never()
            .expect("landed layers must not make imports wait");
        assert_eq!(third.layers, ["d"]);
        assert_eq!(fourth.layers, ["e"]);
        drop((third, fourth));
        assert_eq!(gate.held(), 0);
    }
}
