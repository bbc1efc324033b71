//! The pre-caching inputs. The first byte picks what the rest is (modulo 8):
//! 0 the precache spec (YAML or JSON, as `talm-agent precache run --spec` reads it), whose
//!   exclude patterns, image references and package:channel entries are then used;
//! 1 `registries.conf` documents (TOML, separated by NUL bytes; the last NUL-separated part is
//!   a pull spec to look up);
//! 2 exclude patterns (`excludePrecachePatterns`, one per line; the BRE translation), then
//!   matched against the part after the first NUL;
//! 3 an image reference (parse, print, re-parse, re-home, OCI ref name);
//! 4 a registry's manifest or index reply (JSON), and a descriptor;
//! 5 a pull secret (`config.json`/`.dockercfg` JSON) and a lookup in it;
//! 6 the release payload's `image-references` ImageStream JSON, filtered;
//! 7 the cache's `index.json` as found on disk, read through the cache.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use talm_agent::precache::cache::{Cache, Descriptor, Digest};
use talm_agent::precache::pull::{AnyManifest, media_type, oci_ref_name};
use talm_agent::precache::sources::{
    ExcludePatterns, ImageRef, Mirrors, PullSecret, parse_package_channel,
};
use talm_agent::precache::{sources::release, spec};

fn image_ref(s: &str) {
    let Ok(r) = s.parse::<ImageRef>() else {
        return;
    };
    let shown = r.to_string();
    let again: ImageRef = match shown.parse() {
        Ok(a) => a,
        Err(e) => panic!("{s:?} parsed, but its printed form {shown:?} does not: {e}"),
    };
    assert_eq!(
        again, r,
        "{s:?} printed as {shown:?} parses to another reference"
    );
    let _ = (r.name(), r.reference(), r.is_digest());
    let _ = r.with_registry("mirror.example:5000/ns/repo");
    let _ = oci_ref_name(&shown);
}

fn precache_spec(text: &str) {
    let Ok(s) = spec::parse(text) else {
        return;
    };
    let _ = spec::hash(&s);
    let _ =
        ExcludePatterns::new(&s.exclude_precache_patterns).map(|e| e.excludes(&s.platform_image));
    for image in s.additional_images.iter().chain([&s.platform_image]) {
        image_ref(image);
    }
    for entry in &s.operators_packages_and_channels {
        let _ = parse_package_channel(entry);
    }
}

fn registries_conf(text: &str) {
    let mut parts: Vec<&str> = text.split('\0').collect();
    let lookup = if parts.len() > 1 { parts.pop() } else { None };
    let docs: Vec<(PathBuf, String)> = parts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                PathBuf::from(format!("/etc/containers/{i}.conf")),
                (*t).to_string(),
            )
        })
        .collect();
    let Ok(m) = Mirrors::from_toml_docs(&docs) else {
        return;
    };
    let _ = m.is_empty();
    for spec in lookup.into_iter().chain([
        "quay.io/openshift-release-dev/ocp-release:4.16.0-x86_64",
        "registry.example:5000/ns/img@sha256:0000000000000000000000000000000000000000000000000000000000000000",
    ]) {
        let _ = m.candidates(spec);
    }
}

fn exclude(text: &str) {
    let (patterns, subject) = text
        .split_once('\0')
        .unwrap_or((text, "quay.io/ns/aws-ebs-csi-driver:v1"));
    let lines: Vec<String> = patterns.lines().map(str::to_string).collect();
    if let Ok(e) = ExcludePatterns::new(&lines) {
        let _ = e.excludes(subject);
        let _ = e.matching_pattern(subject);
        let _ = e.is_empty();
    }
}

fn manifest(bytes: &[u8]) {
    if let Ok(m) = serde_json::from_slice::<AnyManifest>(bytes) {
        let _ = media_type(&m);
        let _ = format!("{m:?}");
    }
    if let Ok(d) = serde_json::from_slice::<Descriptor>(bytes)
        && let Ok(digest) = Digest::parse(&d.digest)
    {
        let _ = (digest.hex().len(), digest.to_string());
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = Digest::parse(text);
    }
}

fn pull_secret(bytes: &[u8]) {
    let (json, lookup) = match bytes.iter().position(|&b| b == 0) {
        Some(i) => (
            &bytes[..i],
            std::str::from_utf8(&bytes[i + 1..]).unwrap_or(""),
        ),
        None => (bytes, "quay.io/ns/img:tag"),
    };
    if let Ok(s) = PullSecret::from_json(json) {
        let _ = s.is_empty();
        let _ = s.credentials(lookup);
        let _ = s.credentials("registry.example:5000/a/b@sha256:00");
    }
}

fn image_references(bytes: &[u8]) {
    if let Ok(refs) = release::parse_image_references(bytes) {
        let exclude =
            ExcludePatterns::new(&["aws".to_string(), "^azure".to_string()]).unwrap_or_default();
        let _ = release::filter_release(refs, &exclude);
    }
}

fn cache_index(bytes: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    if std::fs::write(dir.path().join("index.json"), bytes).is_err() {
        return;
    }
    if let Ok(cache) = Cache::open(dir.path()) {
        let _ = cache.tagged("quay.io/ns/img:tag");
        let _ = cache.tagged("");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = std::str::from_utf8(rest).ok();
    match (which % 8, text) {
        (0, Some(t)) => precache_spec(t),
        (1, Some(t)) => registries_conf(t),
        (2, Some(t)) => exclude(t),
        (3, Some(t)) => image_ref(t),
        (4, _) => manifest(rest),
        (5, _) => pull_secret(rest),
        (6, _) => image_references(rest),
        (7, _) => cache_index(rest),
        _ => {}
    }
});
