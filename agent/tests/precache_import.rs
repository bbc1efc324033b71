//! The import stage of `talm-agent precache run` (issue 17 §4) against real skopeo and a real
//! containers-storage (vfs driver under a temp host root), with images from a real
//! `docker-registry` (`precache_support`): several imports at once bring every image in with
//! each shared layer stored once, images already in the storage (imported by another tool) are
//! skipped, a storage that cannot be written fails the run with skopeo's reason, and a run
//! killed half-way through its imports is finished by the next run without fetching again.
// Tests run the agent binary, the registry and skopeo: spawning processes is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod precache_support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use precache_support::node::{Node, text};
use precache_support::{Fixture, Registry, build_fixture};
use serde_json::Value;

/// A spec for the release images and the additional images (no operators).
fn spec(fx: &Fixture) -> (String, Vec<String>) {
    let extra: Vec<String> = fx.additional.iter().map(|i| format!("\"{i}\"")).collect();
    let yaml = format!(
        "platformImage: \"{}\"\nadditionalImages: [{}]\n",
        fx.release,
        extra.join(", ")
    );
    let mut expected = vec![fx.release.clone()];
    expected.extend(fx.release_images.iter().map(|(_, s)| s.clone()));
    expected.extend(fx.additional.iter().cloned());
    (yaml, expected)
}

/// containers-storage's own image list under the node (`vfs-images/images.json`).
fn stored_images(node: &Node) -> Vec<Value> {
    let p = node
        .root
        .path()
        .join("var/lib/containers/storage/vfs-images/images.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

fn stored_names(node: &Node) -> BTreeSet<String> {
    stored_images(node)
        .iter()
        .flat_map(|i| i["names"].as_array().cloned().unwrap_or_default())
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

/// image name → state, from the status file.
fn states(s: &Value) -> BTreeMap<String, String> {
    s["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn parallel_imports_bring_in_every_image_with_each_shared_layer_once() {
    let reg = Registry::start_plain();
    let fx = build_fixture(&reg, 12, None);
    let node = Node::new(&reg);
    let (yaml, expected) = spec(&fx);
    let spec = node.spec(&yaml);

    let out = node.run(&spec, &["--import-parallel", "3", "--parallel", "6"]);
    assert!(out.status.success(), "{}", text(&out));
    let s = node.status();
    assert_eq!(s["state"], "Succeeded", "{s:#}");
    let want: BTreeSet<String> = expected.iter().cloned().collect();
    let st = states(&s);
    assert_eq!(st.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert!(st.values().all(|v| v == "imported"), "{st:?}");
    // containers-storage names every image (by digest for release components, by tag for the
    // additional ones), and skopeo can read each back.
    let names = stored_names(&node);
    for img in &expected {
        assert!(names.contains(img), "{img} is not named in images.json");
        assert!(node.imported(img), "skopeo cannot inspect {img}");
    }
    // Each layer is stored once: no two layers with the same compressed digest.
    let layers: Vec<Value> = serde_json::from_slice(
        &std::fs::read(
            node.root
                .path()
                .join("var/lib/containers/storage/vfs-layers/layers.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut seen = BTreeSet::new();
    for l in &layers {
        let d = l["compressed-diff-digest"].as_str().unwrap().to_string();
        assert!(seen.insert(d.clone()), "layer {d} is stored twice");
    }
    // Every layer of the listed images is there (the three shared base layers among them).
    let mut want_layers = BTreeSet::new();
    for img in &expected {
        // The first blob is the config.
        want_layers.extend(fx.image_blobs[img].iter().skip(1).cloned());
    }
    assert_eq!(seen, want_layers);
}

#[test]
fn images_already_in_the_storage_are_skipped_and_the_rest_imported() {
    let reg = Registry::start_plain();
    let fx = build_fixture(&reg, 6, None);
    let node = Node::new(&reg);
    let (yaml, expected) = spec(&fx);
    // Two images put there by another tool (skopeo straight from the registry), under the
    // names the list uses: one by digest, one by tag.
    let by_digest = fx.release_images[2].1.clone();
    let by_tag = fx.additional[0].clone();
    for img in [&by_digest, &by_tag] {
        let out = reg
            .skopeo()
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{img}"))
            .arg(node.storage(img))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let served_before = reg.served_blob_bytes();
    let spec = node.spec(&yaml);
    let out = node.run(&spec, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let s = node.status();
    assert_eq!(s["state"], "Succeeded", "{s:#}");
    let st = states(&s);
    for (img, state) in &st {
        let want = if *img == by_digest || *img == by_tag {
            "present"
        } else {
            "imported"
        };
        assert_eq!(state, want, "{img}");
    }
    assert_eq!(s["counters"]["imagesPresent"].as_u64(), Some(2));
    // The skipped images' own layers were not fetched again.
    let rest: Vec<String> = expected
        .iter()
        .filter(|i| **i != by_digest && **i != by_tag)
        .cloned()
        .collect();
    assert_eq!(
        reg.served_blob_bytes() - served_before,
        fx.unique_bytes(&rest)
    );
    let names = stored_names(&node);
    assert!(expected.iter().all(|i| names.contains(i)), "{names:?}");
}

#[test]
fn a_storage_that_cannot_be_written_fails_the_run_with_skopeos_reason() {
    let reg = Registry::start_plain();
    let fx = build_fixture(&reg, 2, None);
    let node = Node::new(&reg);
    // The graph root is a file, so containers-storage cannot be opened.
    let graph = node.root.path().join("var/lib/containers/storage");
    std::fs::remove_dir_all(&graph).unwrap();
    std::fs::write(&graph, "not a directory").unwrap();
    let (yaml, expected) = spec(&fx);
    let spec = node.spec(&yaml);

    let out = node.run(&spec, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{} of {} images could not be pre-cached",
            expected.len(),
            expected.len()
        )),
        "{stderr}"
    );
    let s = node.status();
    assert_eq!(s["state"], "UnrecoverableError", "{s:#}");
    for i in s["images"].as_array().unwrap() {
        assert_eq!(i["state"], "failed", "{i:#}");
        let e = i["error"].as_str().unwrap();
        // The reason names the step, the command and what skopeo said about the storage.
        assert!(e.starts_with("import: `"), "{e}");
        assert!(e.contains("skopeo copy"), "{e}");
        assert!(e.contains("failed (exit 1)"), "{e}");
        assert!(e.contains("not a directory"), "{e}");
    }
    // The fetch itself succeeded: the cache holds everything, so a fixed storage needs no fetch.
    std::fs::remove_file(&graph).unwrap();
    std::fs::create_dir_all(&graph).unwrap();
    let served = reg.served_blob_bytes();
    let out = node.run(&spec, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(reg.served_blob_bytes(), served);
    assert!(expected.iter().all(|i| node.imported(i)));
}

#[test]
fn a_run_killed_during_its_imports_is_finished_by_the_next_without_fetching() {
    let reg = Registry::start_plain();
    let fx = build_fixture(&reg, 24, None);
    let node = Node::new(&reg);
    let (yaml, expected) = spec(&fx);
    let spec = node.spec(&yaml);
    let mut child = node
        .command(&spec, &["--import-parallel", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some images are imported and others are not.
    let t0 = Instant::now();
    let imported_at_kill = loop {
        if let Some(s) = node.status_file() {
            let n = states(&s).values().filter(|v| *v == "imported").count();
            if n >= 2 {
                assert!(
                    n < expected.len(),
                    "every image was imported before the kill"
                );
                child.kill().unwrap();
                break n;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "imports never started: {:?}",
            node.status_file()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.wait().unwrap();
    // The skopeo child of the killed agent may still be running: let it end (it holds the
    // storage's locks) before looking at the storage.
    let t0 = Instant::now();
    while Command::new("pgrep")
        .args(["-f", &node.root.path().display().to_string()])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(t0.elapsed() < Duration::from_secs(60), "skopeo never ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    let in_storage_at_kill = expected.iter().filter(|i| node.imported(i)).count();
    assert!(in_storage_at_kill >= imported_at_kill);
    assert!(in_storage_at_kill < expected.len());

    let served = reg.served_blob_bytes();
    let out = node.run(&spec, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let s = node.status();
    assert_eq!(s["state"], "Succeeded", "{s:#}");
    let st = states(&s);
    let present = st.values().filter(|v| *v == "present").count();
    let imported = st.values().filter(|v| *v == "imported").count();
    assert_eq!(present, in_storage_at_kill, "{st:?}");
    assert_eq!(present + imported, expected.len(), "{st:?}");
    // Everything came from the cache.
    assert_eq!(reg.served_blob_bytes(), served);
    assert!(expected.iter().all(|i| node.imported(i)));
}
