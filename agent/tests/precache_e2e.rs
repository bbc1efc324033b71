//! End-to-end pre-caching (issue 4 §5) with the real `talm-agent precache run` binary against a
//! real `docker-registry` on 127.0.0.1 and a synthetic release/index/operator image set built with
//! umoci and skopeo (`precache_support`). Imports go into a vfs containers-storage rooted in a
//! temp host root and are checked with `skopeo inspect containers-storage:[vfs@…]`.
// Tests run the agent binary, the registry and skopeo: spawning processes is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod precache_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use precache_support::node::{Node, text, wait_exit};
use precache_support::{Fixture, Registry, build_fixture};
use serde_json::Value;

fn yaml_list(items: &[String]) -> String {
    let v: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", v.join(", "))
}

/// A spec for everything: release (minus `exclude`), the first catalog package/channel, the
/// additional images.
fn full_spec(fx: &Fixture, exclude: &[String], space: &str) -> (String, Vec<String>) {
    let ((pkg, channel), op_images) = fx.catalog[0].clone();
    let yaml = format!(
        "platformImage: \"{}\"\noperatorsIndexes: [\"{}\"]\noperatorsPackagesAndChannels: [\"{pkg}:{channel}\"]\n\
         excludePrecachePatterns: {}\nadditionalImages: {}\nspaceRequired: \"{space}\"\n",
        fx.release,
        fx.index,
        yaml_list(exclude),
        yaml_list(&fx.additional),
    );
    let mut expected = vec![fx.release.clone()];
    expected.extend(fx.release_images.iter().map(|(_, s)| s.clone()));
    expected.push(fx.index.clone());
    expected.extend(op_images);
    expected.extend(fx.additional.iter().cloned());
    (yaml, expected)
}

fn image_names(status: &Value) -> BTreeSet<String> {
    status["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

fn image_states(status: &Value) -> BTreeSet<String> {
    status["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["state"].as_str().unwrap().to_string())
        .collect()
}

/// Waits (up to `limit`) until `f` holds on the status file, polling.
fn wait_status(node: &Node, limit: Duration, f: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(s) = node.status_file()
            && f(&s)
        {
            return s;
        }
        assert!(
            t0.elapsed() < limit,
            "status never got there: {:?}",
            node.status_file()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn full_precache_into_cache_and_vfs_storage_with_excludes_then_skips_present_images() {
    let reg = Registry::start_plain();
    let fx = build_fixture(&reg, 20, None);
    let node = Node::new(&reg);
    // Exclude one component by tag name and one by a pull-spec fragment (TALM's grep semantics).
    let by_name = fx.release_images[0].clone();
    let by_spec = fx.release_images[1].clone();
    let digest_fragment = by_spec.1.rsplit_once('@').unwrap().1[7..23].to_string();
    let exclude = vec![format!("^{}$", by_name.0), digest_fragment];
    let (yaml, mut expected) = full_spec(&fx, &exclude, "1");
    expected.retain(|i| *i != by_name.1 && *i != by_spec.1);
    let spec = node.spec(&yaml);

    let out = node.run(&spec, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let s = node.status();
    assert_eq!(s["state"], "Succeeded", "{s:#}");
    let want: BTreeSet<String> = expected.iter().cloned().collect();
    assert_eq!(image_names(&s), want);
    assert_eq!(image_states(&s), BTreeSet::from(["imported".to_string()]));
    assert_eq!(s["imagesDone"].as_u64(), Some(want.len() as u64));
    assert!(s["imagesTotal"].as_u64().unwrap() >= 20);
    // Every blob came from the registry exactly once: shared base layers were not fetched twice.
    let unique = fx.unique_bytes(&expected);
    assert_eq!(reg.served_blob_bytes(), unique);
    assert_eq!(s["bytesDone"].as_u64(), Some(unique));
    assert_eq!(s["counters"]["blobsFetched"].as_u64().unwrap() as usize, {
        let mut set = BTreeSet::new();
        for i in &expected {
            set.extend(fx.image_blobs[i].iter().cloned());
        }
        set.len()
    });
    // The cache is an OCI layout naming every image, and containers-storage has them.
    let index: Value =
        serde_json::from_slice(&std::fs::read(node.cache().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), want.len());
    for img in [
        &fx.release,
        &fx.release_images[5].1,
        &fx.additional[0],
        &expected[expected.len() - 1],
    ] {
        assert!(node.imported(img), "{img} is not in containers-storage");
    }
    assert!(!node.imported(&by_name.1), "an excluded image was imported");

    // A second run finds every image in containers-storage and fetches nothing.
    let before = reg.served_blob_bytes();
    let out = node.run(&spec, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let s = node.status();
    assert_eq!(s["state"], "Succeeded");
    assert_eq!(image_states(&s), BTreeSet::from(["present".to_string()]));
    assert_eq!(
        s["counters"]["imagesPresent"].as_u64(),
        Some(want.len() as u64)
    );
    // Only the release and index layers are read again (from the cache: nothing is served).
    assert_eq!(reg.served_blob_bytes(), before);
    // The text status names the state.
    let out = Command::new(env!("CARGO_BIN_EXE_talm-agent"))
        .args(["precache", "status", "--state-dir"])
        .arg(node.state.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Succeeded"));
}

#[test]
fn tls_with_basic_auth_through_certs_d_and_the_pull_secret() {
    let reg = Registry::start_tls_auth();
    let fx = build_fixture(&reg, 4, None);
    let node = Node::new(&reg);
    let (yaml, expected) = full_spec(&fx, &[], "");
    let out = node.run(&node.spec(&yaml), &["--no-import"]);
    assert!(out.status.success(), "{}", text(&out));
    let s = node.status();
    assert_eq!(s["state"], "Succeeded");
    assert_eq!(image_states(&s), BTreeSet::from(["cached".to_string()]));
    assert_eq!(reg.served_blob_bytes(), fx.unique_bytes(&expected));

    // Without the pull secret the registry refuses, and the run says so.
    let node2 = Node::new(&reg);
    std::fs::remove_file(node2.root.path().join("var/lib/kubelet/config.json")).unwrap();
    let out = node2.run(&node2.spec(&yaml), &["--no-import", "--retries", "0"]);
    assert!(!out.status.success());
    let s = node2.status();
    assert_eq!(s["state"], "UnrecoverableError");
    assert!(
        s["message"].as_str().unwrap().contains("authoriz"),
        "{}",
        s["message"]
    );
}

#[test]
fn mirror_only_site_pulls_everything_from_the_mirror() {
    let reg = Registry::start_plain();
    let fx = build_fixture(&reg, 4, Some("quay.example.invalid"));
    assert!(fx.release.starts_with("quay.example.invalid/"));
    let node = Node::bare();
    node.trust(&reg);
    node.write(
        "etc/containers/registries.conf",
        &format!(
            "[[registry]]\nprefix = \"quay.example.invalid\"\nlocation = \"quay.example.invalid\"\nmirror-by-digest-only = false\n\
             [[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
            reg.host
        ),
    );
    let (yaml, expected) = full_spec(&fx, &[], "");
    let out = node.run(&node.spec(&yaml), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let s = node.status();
    assert_eq!(s["state"], "Succeeded");
    let names = image_names(&s);
    assert!(
        names.iter().all(|n| n.starts_with("quay.example.invalid/")),
        "{names:?}"
    );
    for i in s["images"].as_array().unwrap() {
        assert!(
            i["pulledFrom"].as_str().unwrap().starts_with(&reg.host),
            "{i}"
        );
    }
    assert_eq!(reg.served_blob_bytes(), fx.unique_bytes(&expected));
    // Imported under the source name (what CRI-O asks for).
    assert!(node.imported(&fx.additional[0]));
}

#[test]
fn killed_mid_pull_resumes_without_refetching_finished_blobs() {
    let reg = Registry::start_plain();
    let fx = build_fixture(&reg, 20, None);
    let node = Node::new(&reg);
    let (yaml, expected) = full_spec(&fx, &[], "");
    let spec = node.spec(&yaml);
    let unique = fx.unique_bytes(&expected);
    // Slow enough to stop it half-way.
    let limit = (unique / 8).to_string();
    let mut child = node
        .command(&spec, &["--no-import", "--bandwidth-limit", &limit])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_status(&node, Duration::from_secs(120), |s| {
        s["state"] == "Active"
            && s["bytesTotal"].as_u64() == Some(unique)
            && s["bytesDone"].as_u64().unwrap_or(0) * 2 >= unique
    });
    // `precache status` reads the journal while the run goes on.
    let live = node.status();
    assert_eq!(live["state"], "Active", "{live:#}");
    assert!(live["bytesDone"].as_u64().unwrap() < live["bytesTotal"].as_u64().unwrap());
    child.kill().unwrap();
    child.wait().unwrap();
    // The journal still says Active; `precache status` sees that its writer is gone.
    let dead = node.status();
    assert_eq!(dead["state"], "Active");
    assert_eq!(dead["interrupted"], true, "{dead:#}");
    // What the cache holds at the kill: finished blobs and partial ones.
    let finished: BTreeSet<String> = fx
        .blob_sizes
        .keys()
        .filter(|d| node.blob(d).exists())
        .cloned()
        .collect();
    let partial: Vec<(String, u64)> = fx
        .blob_sizes
        .keys()
        .filter_map(|d| {
            std::fs::metadata(node.partial(d))
                .ok()
                .filter(|m| m.len() > 0)
                .map(|m| (d.clone(), m.len()))
        })
        .collect();
    assert!(!finished.is_empty(), "nothing finished before the kill");
    let served_before = reg.served_blob_bytes();
    let requests_before = reg.blob_requests().len();

    let out = node.run(&spec, &["--no-import"]);
    assert!(out.status.success(), "{}", text(&out));
    let s = node.status();
    assert_eq!(s["state"], "Succeeded");
    let second: Vec<_> = reg
        .blob_requests()
        .into_iter()
        .skip(requests_before)
        .collect();
    for r in &second {
        assert!(
            !finished.contains(&r.digest),
            "blob {} was finished before the kill and fetched again",
            r.digest
        );
    }
    // Partials continued where they stopped (a Range request for the rest only).
    for (d, len) in &partial {
        let size = fx.blob_sizes[d];
        let got: u64 = second
            .iter()
            .filter(|r| r.digest == *d)
            .map(|r| r.written)
            .sum();
        assert_eq!(
            got,
            size - len,
            "blob {d}: {len} of {size} bytes were on disk"
        );
    }
    // A partial file that already held every byte (the kill came between the last write and
    // the rename) is verified and committed without a request: it is not a resumed download.
    let incomplete = partial
        .iter()
        .filter(|(d, len)| *len < fx.blob_sizes[d])
        .count() as u64;
    let resumed = s["counters"]["blobsResumed"].as_u64().unwrap();
    assert!(
        resumed >= incomplete,
        "{resumed} resumed downloads, {incomplete} incomplete partial files at the kill"
    );
    // The second run fetched only what was missing.
    let served_after = reg.served_blob_bytes() - served_before;
    let on_disk_before: u64 = finished.iter().map(|d| fx.blob_sizes[d]).sum::<u64>()
        + partial.iter().map(|(_, l)| *l).sum::<u64>();
    assert_eq!(served_after, unique - on_disk_before);
}

#[test]
fn registry_stopped_mid_pull_then_restarted_is_retried_to_success() {
    let mut reg = Registry::start_plain();
    let fx = build_fixture(&reg, 6, None);
    let node = Node::new(&reg);
    let (yaml, expected) = full_spec(&fx, &[], "");
    let spec = node.spec(&yaml);
    let unique = fx.unique_bytes(&expected);
    let limit = (unique / 6).to_string();
    let mut child = node
        .command(
            &spec,
            &["--no-import", "--bandwidth-limit", &limit, "--retries", "8"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_status(&node, Duration::from_secs(120), |s| {
        s["state"] == "Active"
            && s["bytesTotal"].as_u64() == Some(unique)
            && s["bytesDone"].as_u64().unwrap_or(0) * 4 >= unique
    });
    reg.stop();
    std::thread::sleep(Duration::from_secs(2));
    reg.restart();
    let status = wait_exit(&mut child, Duration::from_secs(240));
    let s = node.status();
    assert!(status.success(), "{s:#}");
    assert_eq!(s["state"], "Succeeded");
    assert!(s["counters"]["retries"].as_u64().unwrap() > 0, "{s:#}");
}

#[test]
fn a_corrupted_blob_is_rejected_by_digest_and_never_cached() {
    let reg = Registry::start_plain();
    let fx = build_fixture(&reg, 3, None);
    let node = Node::new(&reg);
    // Corrupt the unique (last) layer of an additional image in the registry's storage, keeping
    // its size.
    let victim = &fx.additional[0];
    let digest = fx.image_blobs[victim].last().unwrap().clone();
    let file = reg.blob_file(&digest);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();

    let (yaml, _) = full_spec(&fx, &[], "");
    let out = node.run(&node.spec(&yaml), &["--no-import", "--retries", "1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&digest), "{}", text(&out));
    let s = node.status();
    assert_eq!(s["state"], "UnrecoverableError");
    let failed: Vec<&Value> = s["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{s:#}");
    assert_eq!(failed[0]["name"].as_str(), Some(victim.as_str()));
    let err = failed[0]["error"].as_str().unwrap();
    assert!(
        err.contains(&digest) && err.contains("digest mismatch"),
        "{err}"
    );
    assert!(s["counters"]["digestMismatches"].as_u64().unwrap() >= 2);
    assert!(
        !node.blob(&digest).exists(),
        "corrupt content landed in the cache"
    );
    assert!(!node.partial(&digest).exists());
    // The other images are fine.
    assert!(image_states(&s).contains("cached"));
}

#[test]
fn too_little_disk_fails_before_pulling_with_needed_and_available() {
    let reg = Registry::start_plain();
    let fx = build_fixture(&reg, 2, None);
    let node = Node::new(&reg);
    let (yaml, _) = full_spec(&fx, &[], "1000000 GiB");
    let out = node.run(&node.spec(&yaml), &[]);
    assert!(!out.status.success());
    let s = node.status();
    assert_eq!(s["state"], "UnrecoverableError");
    let msg = s["message"].as_str().unwrap();
    assert!(
        msg.contains("not enough space for precaching")
            && msg.contains("available")
            && msg.contains("1000000 GiB required"),
        "{msg}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1000000 GiB required"));
    assert_eq!(
        reg.served_blob_bytes(),
        0,
        "it pulled before checking the space"
    );

    // The kubelet's image-GC threshold counts: at 1% no space is left at all.
    node.write(
        "etc/kubernetes/kubelet.conf",
        "imageGCHighThresholdPercent: 1\n",
    );
    let (yaml, _) = full_spec(&fx, &[], "1");
    let out = node.run(&node.spec(&yaml), &[]);
    assert!(!out.status.success());
    let msg = node.status()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("under the 1% image-GC threshold"), "{msg}");
}

#[test]
fn bad_spec_files_are_refused_with_the_reason() {
    let node = Node::bare();
    let cases = [
        (
            "platformImage: r.io/a:1\nplatfromImage: typo\n",
            "platfromImage",
        ),
        (
            "additionalImages: [a.io/b:1]\nspaceRequired: 3 XB\n",
            "spaceRequired",
        ),
        ("operatorsIndexes: [r.io/idx:1]\n", "no packages"),
        ("spaceRequired: 3\n", "no software spec"),
        ("additionalImages: [[[\n", "spec.yaml"),
    ];
    for (yaml, want) in cases {
        let out = node.run(&node.spec(yaml), &[]);
        assert!(!out.status.success(), "{yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{yaml}: {err}");
    }
    let out = node.run(Path::new("/nonexistent/spec.yaml"), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/spec.yaml"));
    // A deadline that has passed ends in PrecacheTimeout, with a non-zero exit.
    let spec = node.spec("additionalImages: [\"127.0.0.1:1/a/b:v1\"]\n");
    let status_before = std::fs::metadata(node.state.path().join("precache/status.json")).is_ok();
    assert!(!status_before);
    let out = node.run(&spec, &["--deadline", "2001-01-01T00:00:00Z"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("deadline"),
        "{}",
        text(&out)
    );
    assert_eq!(node.status()["state"], "PrecacheTimeout");
    let out = node.run(&spec, &["--deadline", "yesterday"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--deadline"),
        "{}",
        text(&out)
    );
    std::fs::remove_file(node.state.path().join("precache/status.json")).unwrap();
    // No run, no status file: `precache status` says so.
    let out = Command::new(env!("CARGO_BIN_EXE_talm-agent"))
        .args(["precache", "status", "--state-dir"])
        .arg(node.state.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("status.json"));
}

#[test]
fn a_manifest_list_is_cached_whole_and_the_node_platform_is_imported() {
    let reg = Registry::start_plain();
    let fx = build_fixture(&reg, 2, None);
    let node = Node::new(&reg);
    // Make a two-platform index out of an additional image (both entries name the same image
    // manifest; only the node's platform entry is followed).
    let src = &fx.additional[0];
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("l");
    let mut c = reg.skopeo();
    c.args(["copy", "--quiet"])
        .args(reg.skopeo_tls_args(true))
        .arg(format!("docker://{src}"))
        .arg(format!("oci:{}:x", layout.display()));
    assert!(c.status().unwrap().success());
    let idx: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = idx["manifests"][0].clone();
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let other = if arch == "amd64" { "arm64" } else { "amd64" };
    let list = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
             "platform": {"os": "linux", "architecture": other}},
            {"mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
             "platform": {"os": "linux", "architecture": arch}},
        ]
    });
    let bytes = serde_json::to_vec(&list).unwrap();
    let hex = {
        let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
        talm_shared::hex::encode(d.as_ref())
    };
    std::fs::write(layout.join("blobs/sha256").join(&hex), &bytes).unwrap();
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": format!("sha256:{hex}"), "size": bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "x"}}]});
    std::fs::write(layout.join("index.json"), top.to_string()).unwrap();
    let multi = format!("{}/talm/multi:v1", reg.host);
    let mut c = reg.skopeo();
    c.args(["copy", "--quiet", "--all"])
        .args(reg.skopeo_tls_args(false))
        .arg(format!("oci:{}:x", layout.display()))
        .arg(format!("docker://{multi}"));
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let spec = node.spec(&format!("additionalImages: [\"{multi}\"]\n"));
    let out = node.run(&spec, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(node.status()["state"], "Succeeded");
    // The cache names the list itself (so it imports by the same reference) and holds the
    // chosen platform's blobs.
    let index: Value =
        serde_json::from_slice(&std::fs::read(node.cache().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], format!("sha256:{hex}"));
    for b in &fx.image_blobs[src] {
        assert!(node.blob(b).exists(), "{b} missing from the cache");
    }
    assert!(node.imported(&multi));
}
