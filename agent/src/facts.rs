//! Node facts, rooted at `--host-root` (the node's `/` as mounted into the agent). Everything
//! the agent learns about its node goes through [`HostInfo`], so tests run the real code
//! against a temp directory and fakes can stand in for orchestration tests. Capacity comes from
//! the agent's one disk seam, [`Disk`], which every [`HostInfo`] is.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use talm_proto::v1::{ContainersStorage, NodeFacts, OstreeDeployment, RecoveryDir};

use crate::host::disk::{Disk, FsStats, RealDisk};
use crate::host::root::HostRoot;

/// The node, as the agent sees it: a [`Disk`] (statvfs of real paths, i.e. paths under
/// [`HostInfo::root`]) plus what the agent reads from the node's files.
pub trait HostInfo: Disk {
    /// The host root every host path is taken under.
    fn root(&self) -> &HostRoot;
    /// Kubelet's `imageGCHighThresholdPercent` (85 when unset or out of 1..=99).
    fn image_gc_high_threshold(&self) -> u32;
    /// Everything for Hello.
    fn facts(&self) -> NodeFacts;
}

/// Containers storage.
pub const CONTAINERS_STORAGE: &str = "/var/lib/containers";
/// Recovery directory.
pub const RECOVERY_DIR: &str = "/var/recovery";
/// Kubelet's config on OpenShift nodes.
pub const KUBELET_CONFIG: &str = "/etc/kubernetes/kubelet.conf";
/// Default image GC threshold.
pub const DEFAULT_GC_THRESHOLD: u32 = 85;

/// statvfs of a host path (such as [`CONTAINERS_STORAGE`]) under `host`'s root.
pub fn host_stats(host: &dyn HostInfo, path: &str) -> io::Result<FsStats> {
    host.stats(&host.root().join(path))
}

/// The real host.
#[derive(Clone, Debug)]
pub struct Host {
    root: HostRoot,
}

impl Host {
    /// A host rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: HostRoot::new(root),
        }
    }

    /// A host path under the root (`..` components are dropped: see [`HostRoot::join`]).
    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }

    fn deployments(&self) -> Vec<OstreeDeployment> {
        let booted = self.booted_deployment();
        let mut out = Vec::new();
        let Ok(oses) = std::fs::read_dir(self.path("/ostree/deploy")) else {
            return out;
        };
        for os in oses.flatten() {
            let osname = os.file_name().to_string_lossy().into_owned();
            let Ok(deps) = std::fs::read_dir(os.path().join("deploy")) else {
                continue;
            };
            for d in deps.flatten() {
                let name = d.file_name().to_string_lossy().into_owned();
                if name.ends_with(".origin") || !d.path().is_dir() {
                    continue;
                }
                let Some((checksum, serial)) = name.rsplit_once('.') else {
                    continue;
                };
                let origin =
                    std::fs::read_to_string(d.path().with_file_name(format!("{name}.origin")))
                        .unwrap_or_default();
                let staged = std::fs::read_to_string(self.path("/run/ostree/staged-deployment"))
                    .is_ok_and(|s| s.contains(checksum));
                out.push(OstreeDeployment {
                    osname: osname.clone(),
                    checksum: checksum.to_string(),
                    serial: serial.parse().unwrap_or(0),
                    booted: booted.as_deref() == Some(d.path().as_path())
                        || booted.as_deref().is_some_and(|b| b.ends_with(&name)),
                    pinned: origin.lines().any(|l| l.trim() == "pinned=true"),
                    staged,
                });
            }
        }
        out.sort_by(|a, b| {
            (&a.osname, b.serial, &a.checksum).cmp(&(&b.osname, a.serial, &b.checksum))
        });
        out.truncate(talm_proto::validate::MAX_DEPLOYMENTS);
        out
    }

    /// The booted deployment directory, from the `ostree=` kernel argument.
    fn booted_deployment(&self) -> Option<PathBuf> {
        let cmdline = std::fs::read_to_string(self.path("/proc/cmdline")).ok()?;
        let arg = cmdline
            .split_whitespace()
            .find_map(|a| a.strip_prefix("ostree="))?;
        std::fs::canonicalize(self.path(arg)).ok()
    }

    fn openshift_version(&self) -> String {
        let text = std::fs::read_to_string(self.path("/etc/os-release")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("OPENSHIFT_VERSION="))
            .map(|v| v.trim_matches('"').chars().take(64).collect())
            .unwrap_or_default()
    }
}

impl Disk for Host {
    fn stats(&self, path: &Path) -> io::Result<FsStats> {
        RealDisk.stats(path)
    }

    fn is_mount_point(&self, path: &Path) -> io::Result<bool> {
        RealDisk.is_mount_point(path)
    }
}

impl HostInfo for Host {
    fn root(&self) -> &HostRoot {
        &self.root
    }

    fn image_gc_high_threshold(&self) -> u32 {
        let text = std::fs::read_to_string(self.path(KUBELET_CONFIG)).unwrap_or_default();
        parse_gc_threshold(&text).unwrap_or(DEFAULT_GC_THRESHOLD)
    }

    fn facts(&self) -> NodeFacts {
        let cs = host_stats(self, CONTAINERS_STORAGE).unwrap_or_default();
        let rec = host_stats(self, RECOVERY_DIR).unwrap_or_default();
        let rec_path = self.path(RECOVERY_DIR);
        let separate = match (
            std::fs::metadata(&rec_path),
            std::fs::metadata(self.path("/var")),
        ) {
            (Ok(a), Ok(b)) => a.dev() != b.dev(),
            _ => false,
        };
        NodeFacts {
            containers_storage: Some(ContainersStorage {
                size_bytes: cs.size,
                free_bytes: cs.available,
                image_gc_high_threshold_percent: self.image_gc_high_threshold(),
            }),
            recovery: Some(RecoveryDir {
                free_bytes: rec.available,
                separate_mount: separate,
                exists: rec_path.is_dir(),
            }),
            deployments: self.deployments(),
            openshift_version: self.openshift_version(),
        }
    }
}

/// Finds `imageGCHighThresholdPercent` in a kubelet config (JSON or YAML); `None` when absent or
/// outside 1..=99.
pub fn parse_gc_threshold(text: &str) -> Option<u32> {
    let at = text.find("imageGCHighThresholdPercent")?;
    let rest = &text[at + "imageGCHighThresholdPercent".len()..];
    let rest = rest.trim_start_matches(|c: char| c == '"' || c == ':' || c.is_whitespace());
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok().filter(|v| (1..=99).contains(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_threshold_from_json_and_yaml() {
        assert_eq!(
            parse_gc_threshold(r#"{"imageGCHighThresholdPercent": 80}"#),
            Some(80)
        );
        assert_eq!(
            parse_gc_threshold("imageGCHighThresholdPercent: 70\n"),
            Some(70)
        );
        assert_eq!(
            parse_gc_threshold("imageGCHighThresholdPercent: 100\n"),
            None
        );
        assert_eq!(parse_gc_threshold("other: 1"), None);
    }

    #[test]
    fn facts_from_a_fake_host_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("var/lib/containers")).unwrap();
        std::fs::create_dir_all(r.join("etc/kubernetes")).unwrap();
        std::fs::write(
            r.join("etc/kubernetes/kubelet.conf"),
            "imageGCHighThresholdPercent: 75\n",
        )
        .unwrap();
        std::fs::write(
            r.join("etc/os-release"),
            "ID=rhcos\nOPENSHIFT_VERSION=\"4.16\"\n",
        )
        .unwrap();
        let dep = r.join("ostree/deploy/rhcos/deploy");
        std::fs::create_dir_all(dep.join("abc123.0")).unwrap();
        std::fs::create_dir_all(dep.join("def456.1")).unwrap();
        std::fs::write(
            dep.join("abc123.0.origin"),
            "[origin]\n[libostree-transient]\npinned=true\n",
        )
        .unwrap();
        std::fs::create_dir_all(r.join("proc")).unwrap();
        std::fs::write(
            r.join("proc/cmdline"),
            "ro ostree=/ostree/deploy/rhcos/deploy/def456.1 quiet",
        )
        .unwrap();
        let h = Host::new(r);
        let f = h.facts();
        let cs = f.containers_storage.unwrap();
        assert!(cs.size_bytes > 0 && cs.free_bytes <= cs.size_bytes);
        assert_eq!(cs.image_gc_high_threshold_percent, 75);
        let rec = f.recovery.unwrap();
        assert!(!rec.exists && !rec.separate_mount && rec.free_bytes > 0);
        assert_eq!(f.openshift_version, "4.16");
        assert_eq!(f.deployments.len(), 2);
        let booted: Vec<_> = f
            .deployments
            .iter()
            .filter(|d| d.booted)
            .map(|d| d.checksum.as_str())
            .collect();
        assert_eq!(booted, vec!["def456"]);
        let pinned: Vec<_> = f
            .deployments
            .iter()
            .filter(|d| d.pinned)
            .map(|d| d.checksum.as_str())
            .collect();
        assert_eq!(pinned, vec!["abc123"]);
        // statvfs agrees with itself for a missing path (measured at its parent).
        assert_eq!(
            host_stats(&h, "/var/recovery").unwrap().size,
            host_stats(&h, "/var").unwrap().size
        );
    }

    #[test]
    fn host_paths_cannot_escape_the_host_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        // A file beside the root, which `..` from the root would reach.
        std::fs::write(dir.path().join("os-release"), "outside").unwrap();
        std::fs::write(root.join("os-release"), "inside").unwrap();
        let h = Host::new(&root);
        // `..` components are dropped, not followed (HostRoot::join).
        assert_eq!(
            h.path("/../../etc/../os-release"),
            root.join("etc/os-release")
        );
        assert_eq!(h.path("../os-release"), root.join("os-release"));
        assert!(h.path("/../../../../..").starts_with(&root));
        // The kernel command line is the node's text: `ostree=` with `..` stays under the root.
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(root.join("proc/cmdline"), "ostree=/../os-release").unwrap();
        assert_eq!(
            h.booted_deployment(),
            Some(std::fs::canonicalize(root.join("os-release")).unwrap())
        );
    }
}
