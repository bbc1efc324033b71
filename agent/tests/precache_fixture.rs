//! Proves the pre-caching test support (`precache_support`) works: real `docker-registry`
//! instances (plain HTTP; TLS with a private CA and basic auth), the synthetic release, FBC index,
//! operator and additional images built with umoci and pushed with skopeo, stop/restart keeping
//! content, and the registry-log count of served blob bytes. Needs docker-registry, skopeo and
//! umoci (a missing tool fails the test with the packages to install).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod precache_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use precache_support::{Fixture, Registry, build_fixture};
use serde_json::Value;

/// GETs a blob through the registry API and checks its size.
fn get_blob(reg: &Registry, fx: &Fixture, repo: &str, digest: &str) -> Vec<u8> {
    let (status, body) = reg.api_get(&format!("/v2/{repo}/blobs/{digest}"), true);
    assert_eq!(status, 200, "GET blob {digest} of {repo}");
    assert_eq!(body.len() as u64, fx.blob_sizes[digest], "size of {digest}");
    body
}

/// `host/repo@digest` or `host/repo:tag` → repo.
fn repo_of(spec: &str) -> String {
    let rest = spec.split_once('/').unwrap().1;
    let rest = rest.split('@').next().unwrap();
    match rest.rsplit_once(':') {
        Some((r, _)) => r.to_owned(),
        None => rest.to_owned(),
    }
}

/// Reads `path` out of the (gzip) layers of `spec`, the way the agent does: no unpack.
fn file_in_image(reg: &Registry, fx: &Fixture, spec: &str, path: &str) -> Option<Vec<u8>> {
    let repo = repo_of(spec);
    let blobs = &fx.image_blobs[spec];
    let mut found = None;
    for layer in &blobs[1..] {
        let gz = get_blob(reg, fx, &repo, layer);
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().to_string_lossy().trim_start_matches("./") == path {
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                found = Some(v);
            }
        }
    }
    found
}

/// Channel heads by TALM's rule (the entry no other entry replaces), and their images.
fn heads_from_fbc(text: &[u8]) -> BTreeMap<(String, String), Vec<String>> {
    let docs: Vec<Value> = serde_json::Deserializer::from_slice(text)
        .into_iter::<Value>()
        .map(|d| d.unwrap())
        .collect();
    let mut bundles = BTreeMap::new();
    for d in &docs {
        if d["schema"] == "olm.bundle" {
            let mut imgs: Vec<String> = d["relatedImages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["image"].as_str().unwrap().to_owned())
                .collect();
            imgs.push(d["image"].as_str().unwrap().to_owned());
            imgs.sort();
            imgs.dedup();
            bundles.insert(d["name"].as_str().unwrap().to_owned(), imgs);
        }
    }
    let mut out = BTreeMap::new();
    for d in &docs {
        if d["schema"] == "olm.channel" {
            let entries = d["entries"].as_array().unwrap();
            let replaced: BTreeSet<&str> = entries
                .iter()
                .filter_map(|e| e["replaces"].as_str())
                .collect();
            let head = entries
                .iter()
                .map(|e| e["name"].as_str().unwrap())
                .find(|n| !replaced.contains(n))
                .unwrap();
            out.insert(
                (
                    d["package"].as_str().unwrap().to_owned(),
                    d["name"].as_str().unwrap().to_owned(),
                ),
                bundles[head].clone(),
            );
        }
    }
    out
}

/// Everything the fixture lists exists, with the blobs it claims, and the release and index
/// contents are what TALM's scripts read.
fn check_fixture(reg: &Registry, fx: &Fixture, n: usize) {
    assert_eq!(fx.release_images.len(), n);
    let names: BTreeSet<&String> = fx.release_images.iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), n, "tag names are unique");
    for (_, spec) in &fx.release_images {
        assert!(spec.contains("@sha256:"), "{spec} is by digest");
        assert!(spec.starts_with(&format!("{}/", fx.ref_host)), "{spec}");
    }
    assert_eq!(fx.catalog.len(), 4, "two packages × two channels");
    assert_eq!(fx.additional.len(), 2);

    // Every image: skopeo inspect gives the manifest whose blobs the fixture lists.
    let mut all = fx.all_listed_images();
    all.push(fx.release.clone());
    all.push(fx.index.clone());
    let mut naive = 0u64;
    for spec in &all {
        let direct = fx.on_registry(reg, spec);
        let m = reg
            .inspect_raw(&direct)
            .unwrap_or_else(|e| panic!("skopeo inspect {direct}: {e}"));
        let mut blobs = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
        for l in m["layers"].as_array().unwrap() {
            blobs.push(l["digest"].as_str().unwrap().to_owned());
        }
        assert_eq!(blobs, fx.image_blobs[spec], "blobs of {spec}");
        for b in &blobs {
            let f = reg.blob_file(b);
            assert_eq!(
                std::fs::metadata(&f).unwrap().len(),
                fx.blob_sizes[b],
                "{}",
                f.display()
            );
            naive += fx.blob_sizes[b];
        }
    }
    assert!(
        fx.unique_blob_bytes * 3 < naive,
        "images share base layers: unique {} vs naive {naive}",
        fx.unique_blob_bytes
    );
    assert_eq!(fx.unique_blob_bytes, fx.unique_bytes(&all));

    // The registry API lists the repositories.
    let (status, body) = reg.api_get("/v2/_catalog", true);
    assert_eq!(status, 200);
    let cat: Value = serde_json::from_slice(&body).unwrap();
    let repos: BTreeSet<&str> = cat["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for spec in &all {
        assert!(
            repos.contains(repo_of(spec).as_str()),
            "{spec} in {repos:?}"
        );
    }
    let (status, body) = reg.api_get("/v2/openshift-release-dev/ocp-release/tags/list", true);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("4.99.0-x86_64"));

    // The release image: image-references and release-metadata in a gzip layer.
    let text = file_in_image(reg, fx, &fx.release, "release-manifests/image-references")
        .expect("image-references in the release image");
    let is: Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(is["kind"], "ImageStream");
    let refs: Vec<(String, String)> = is["spec"]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["from"]["kind"], "DockerImage");
            (
                t["name"].as_str().unwrap().to_owned(),
                t["from"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(refs, fx.release_images);
    let meta = file_in_image(reg, fx, &fx.release, "release-manifests/release-metadata")
        .expect("release-metadata");
    let meta: Value = serde_json::from_slice(&meta).unwrap();
    assert_eq!(meta["version"], "4.99.0");
    let release_layers = fx.image_blobs[&fx.release].len() - 1;
    assert!(release_layers >= 2, "the manifests layer is among others");

    // The index image: the configs label and an FBC whose channel heads are the listed images.
    let cfg = get_blob(reg, fx, &repo_of(&fx.index), &fx.image_blobs[&fx.index][0]);
    let cfg: Value = serde_json::from_slice(&cfg).unwrap();
    assert_eq!(
        cfg["config"]["Labels"]["operators.operatorframework.io.index.configs.v1"],
        "/configs"
    );
    let mut heads = BTreeMap::new();
    for (pkg, _) in &fx.default_channels {
        let text = file_in_image(reg, fx, &fx.index, &format!("configs/{pkg}/catalog.json"))
            .unwrap_or_else(|| panic!("configs/{pkg}/catalog.json in the index"));
        heads.extend(heads_from_fbc(&text));
    }
    let listed: BTreeMap<(String, String), Vec<String>> = fx.catalog.iter().cloned().collect();
    assert_eq!(heads, listed);
    // Different channels of one package have different heads.
    assert_ne!(fx.catalog[0].1, fx.catalog[1].1);
}

/// Copies one image out with skopeo and checks the registry counted exactly its blob bytes.
fn check_counting(reg: &Registry, fx: &Fixture, spec: &str) {
    let before = reg.served_blob_bytes();
    let dir = tempfile::tempdir().unwrap();
    let mut c = reg.skopeo();
    c.args(["copy", "--quiet"])
        .args(reg.skopeo_tls_args(true))
        .arg(format!("docker://{}", fx.on_registry(reg, spec)))
        .arg(format!("dir:{}", dir.path().join("img").display()));
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = reg.served_blob_bytes();
    assert_eq!(
        after - before,
        fx.unique_bytes(&[spec]),
        "served blob bytes of one skopeo copy of {spec}"
    );
    let reqs = reg.blob_requests();
    assert!(reqs.iter().all(|r| r.status == 200 || r.status == 206));
}

/// Stopping makes the registry unreachable; restarting on the same port serves the same content.
fn check_stop_restart(reg: &mut Registry, fx: &Fixture) {
    let host = reg.host.clone();
    let spec = fx.on_registry(reg, &fx.release_images[0].1);
    reg.stop();
    assert!(!reg.is_running());
    assert!(
        reg.inspect_raw(&spec).is_err(),
        "a stopped registry serves nothing"
    );
    reg.restart();
    assert_eq!(reg.host, host);
    let m = reg.inspect_raw(&spec).expect("content kept across restart");
    assert_eq!(
        m["config"]["digest"].as_str().unwrap(),
        fx.image_blobs[&fx.release_images[0].1][0]
    );
}

#[test]
fn plain_registry_with_the_full_fixture() {
    let mut reg = Registry::start_plain();
    assert!(reg.url().starts_with("http://127.0.0.1:"));
    assert!(reg.basic_auth.is_none() && reg.ca_pem.is_none());
    let fx = build_fixture(&reg, 24, None);
    assert_eq!(fx.ref_host, reg.host);
    check_fixture(&reg, &fx, 24);
    check_counting(&reg, &fx, &fx.additional[0]);
    check_counting(&reg, &fx, &fx.release_images[3].1);
    check_stop_restart(&mut reg, &fx);
    // The log survives a restart: counting continues.
    check_counting(&reg, &fx, &fx.catalog[0].1[0]);
}

#[test]
fn tls_registry_requires_basic_auth_and_serves_a_mirrored_fixture() {
    let mut reg = Registry::start_tls_auth();
    assert!(reg.url().starts_with("https://127.0.0.1:"));
    assert!(reg.ca_pem.as_ref().unwrap().is_file());

    // Basic auth is required, on the API and for skopeo.
    let (status, _) = reg.api_get("/v2/", false);
    assert_eq!(status, 401, "no credentials");
    let (status, _) = reg.api_get("/v2/", true);
    assert_eq!(status, 200, "with credentials");

    let fx = build_fixture(&reg, 20, Some("quay.example.invalid"));
    assert_eq!(fx.ref_host, "quay.example.invalid");
    assert!(fx.release.starts_with("quay.example.invalid/"));
    for spec in fx.all_listed_images() {
        assert!(spec.starts_with("quay.example.invalid/"), "{spec}");
    }
    let direct = fx.on_registry(&reg, &fx.release);
    let mut c = reg.skopeo();
    c.args(["inspect", "--raw"])
        .arg(format!(
            "--cert-dir={}",
            reg.cert_dir.as_ref().unwrap().display()
        ))
        .arg(format!("docker://{direct}"));
    let out = c.output().unwrap();
    assert!(
        !out.status.success(),
        "skopeo without credentials must be refused"
    );
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("unauthorized") || err.contains("authentication required"),
        "{err}"
    );
    // Without the CA, TLS verification fails.
    let mut c = reg.skopeo();
    c.args(["inspect", "--raw"])
        .arg(format!(
            "--creds={}:{}",
            precache_support::AUTH_USER,
            precache_support::AUTH_PASSWORD
        ))
        .arg(format!("docker://{direct}"));
    let out = c.output().unwrap();
    assert!(!out.status.success(), "an unknown CA must be refused");

    check_fixture(&reg, &fx, 20);
    check_counting(&reg, &fx, &fx.release_images[0].1);
    check_stop_restart(&mut reg, &fx);
}
