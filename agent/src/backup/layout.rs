//! What a backup is made of, read from the host: the `/etc` exclusions (paths named in
//! tmpfiles.d, `.updated`, `kubernetes/manifests`), the MachineConfig files outside the backed-up
//! directories, the latest static-pod revisions, the space estimate, and the names of the
//! files inside a backup directory.

use std::path::{Path, PathBuf};

use crate::host::disk::tree_size;
use crate::host::root::HostRoot;

/// The current backup, under the recovery directory.
pub const CURRENT: &str = "backup";
/// Where a new backup is built before it replaces the current one.
pub const STAGING: &str = "backup.new";
/// The manifest file.
pub const MANIFEST: &str = "manifest.json";
/// The completion marker, written last.
pub const MARKER: &str = "COMPLETE";
/// The `/etc` exclusion list, one path relative to `/etc` per line.
pub const ETC_EXCLUDE: &str = "etc.exclude.list";
/// The directory of the etcd snapshot and static-pod resources (`cluster-restore.sh` input).
pub const CLUSTER_DIR: &str = "cluster";

/// Host directories and their archive base names.
pub const TREES: [(&str, &str); 3] = [
    ("/etc", "etc"),
    ("/usr/local", "local"),
    ("/var/lib/kubelet", "kubelet"),
];
/// The static-pod resources directory.
pub const STATIC_PODS: &str = "/etc/kubernetes/static-pod-resources";
/// The machine-config-daemon's current config.
pub const MCD_CURRENT_CONFIG: &str = "/etc/machine-config-daemon/currentconfig";
/// etcd's database.
pub const ETCD_DB: &str = "/var/lib/etcd/member/snap/db";
/// The static pods whose latest revision is backed up.
pub const STATIC_POD_NAMES: [&str; 4] = [
    "kube-apiserver-pod",
    "kube-controller-manager-pod",
    "kube-scheduler-pod",
    "etcd-pod",
];

/// The `/etc` exclusions: every `/etc/...` path named (second column) in `/etc/tmpfiles.d/*`,
/// plus `.updated` and `kubernetes/manifests`; relative to `/etc`, sorted, deduplicated.
pub fn etc_exclusions(root: &HostRoot) -> Vec<String> {
    let mut out = vec![".updated".to_owned(), "kubernetes/manifests".to_owned()];
    if let Ok(rd) = std::fs::read_dir(root.join("/etc/tmpfiles.d")) {
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            for line in text.lines() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                if let Some(p) = line.split_whitespace().nth(1)
                    && let Some(rel) = p.strip_prefix("/etc/")
                {
                    let rel = rel.trim_end_matches('/');
                    if !rel.is_empty() && !rel.contains("..") {
                        out.push(rel.to_owned());
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether `rel` (relative to `/etc`) is excluded: it or one of its parents is listed.
pub fn is_excluded(exclusions: &[String], rel: &Path) -> bool {
    exclusions.iter().any(|e| rel.starts_with(e))
}

/// The MachineConfig-managed files outside `/etc`, `/usr/local` and `/var/lib/kubelet`, from
/// `.spec.config.storage.files[].path` of the machine-config-daemon's current config. A missing
/// config gives none; an unreadable one is an error (the backup would miss files).
pub fn extras(root: &HostRoot) -> Result<Vec<String>, String> {
    let path = root.join(MCD_CURRENT_CONFIG);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let files = v
        .pointer("/spec/config/storage/files")
        .and_then(|f| f.as_array())
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<String> = files
        .iter()
        .filter_map(|f| f.get("path").and_then(|p| p.as_str()))
        .filter(|p| p.starts_with('/') && !p.contains(".."))
        .filter(|p| !TREES.iter().any(|(dir, _)| Path::new(p).starts_with(dir)))
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// The latest revision directory of each static pod (e.g. `kube-apiserver-pod-12`), by number.
pub fn latest_static_pods(root: &HostRoot) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(root.join(STATIC_PODS)) else {
        return Vec::new();
    };
    let names: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let mut out = Vec::new();
    for pod in STATIC_POD_NAMES {
        let latest = names
            .iter()
            .filter_map(|n| {
                let rev = n.strip_prefix(pod)?.strip_prefix('-')?;
                rev.parse::<u64>().ok().map(|r| (r, n))
            })
            .max_by_key(|(r, _)| *r);
        if let Some((_, n)) = latest {
            out.push(n.clone());
        }
    }
    out
}

/// TALM's space estimate: static-pod resources without `bin/` (twice: once alone and once with
/// the etcd database), the etcd database, `/usr/local`, `/var/lib/kubelet` and `/etc`.
pub fn estimate(root: &HostRoot) -> u64 {
    let static_pods = tree_size(&root.join(STATIC_PODS), &["bin"]);
    let db = tree_size(&root.join(ETCD_DB), &[]);
    // What the backup archives: the directories the host sees there (through links).
    let trees: u64 = TREES
        .iter()
        .map(|(dir, _)| {
            tree_size(
                &root.resolve_dir(dir).unwrap_or_else(|_| root.join(dir)),
                &[],
            )
        })
        .sum();
    static_pods * 2 + db + trees
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_extras_and_revisions_from_a_host_root() {
        let d = tempfile::tempdir().unwrap();
        let root = HostRoot::new(d.path());
        std::fs::create_dir_all(root.join("/etc/tmpfiles.d")).unwrap();
        std::fs::write(
            root.join("/etc/tmpfiles.d/a.conf"),
            "# c\nd /etc/foo 0755 root root -\nL /etc/bar/ - - - - /x\nd /var/x 0755 - - -\n",
        )
        .unwrap();
        assert_eq!(
            etc_exclusions(&root),
            [".updated", "bar", "foo", "kubernetes/manifests"]
        );
        assert!(is_excluded(
            &etc_exclusions(&root),
            Path::new("kubernetes/manifests/x.yaml")
        ));
        assert!(!is_excluded(&etc_exclusions(&root), Path::new("foobar")));

        std::fs::create_dir_all(root.join("/etc/machine-config-daemon")).unwrap();
        std::fs::write(
            root.join(MCD_CURRENT_CONFIG),
            r#"{"spec":{"config":{"storage":{"files":[{"path":"/etc/a"},{"path":"/var/usrlocal/bin/x"},{"path":"/usr/local/bin/y"},{"path":"/opt/z"}]}}}}"#,
        )
        .unwrap();
        assert_eq!(extras(&root).unwrap(), ["/opt/z", "/var/usrlocal/bin/x"]);

        for d in [
            "kube-apiserver-pod-3",
            "kube-apiserver-pod-12",
            "etcd-pod-2",
            "bin",
        ] {
            std::fs::create_dir_all(root.join(STATIC_PODS).join(d)).unwrap();
        }
        assert_eq!(
            latest_static_pods(&root),
            ["kube-apiserver-pod-12", "etcd-pod-2"]
        );
    }
}
