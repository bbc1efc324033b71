//! The payload images of an OpenShift release image: `release-manifests/image-references`, an
//! ImageStream whose `spec.tags[]` map a component name to its pull spec (`.from.name`). TALM's
//! `release.sh` mounts the release image and reads this file with `jq`; here it is read straight
//! from the layer stream, without unpacking anything to disk.

use std::io::Read;

use serde::Deserialize;

use super::{ExcludePatterns, SourceError, stream};

/// The path of the file inside the release image.
pub const IMAGE_REFERENCES_PATH: &str = "release-manifests/image-references";

/// One payload image: its component (tag) name and pull spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReference {
    /// The tag name (`cluster-version-operator`, `ovn-kubernetes`, ...).
    pub name: String,
    /// The pull spec (`quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:...`).
    pub pull_spec: String,
}

#[derive(Deserialize)]
struct ImageStream {
    spec: Option<Spec>,
}

#[derive(Deserialize)]
struct Spec {
    #[serde(default)]
    tags: Option<Vec<Tag>>,
}

#[derive(Deserialize)]
struct Tag {
    name: Option<String>,
    from: Option<From>,
}

#[derive(Deserialize)]
struct From {
    name: Option<String>,
}

fn bad(reason: impl Into<String>) -> SourceError {
    SourceError::ImageReferences {
        reason: reason.into(),
    }
}

/// Parses the ImageStream JSON. Every tag needs a `name` and a `from.name` (TALM would pass an
/// empty pull spec on to `podman pull`; here it is an error naming the tag).
pub fn parse_image_references(json: &[u8]) -> Result<Vec<ImageReference>, SourceError> {
    let stream: ImageStream =
        serde_json::from_slice(json).map_err(|e| bad(format!("not an ImageStream: {e}")))?;
    let tags = stream
        .spec
        .ok_or_else(|| bad("no spec"))?
        .tags
        .ok_or_else(|| bad("no spec.tags"))?;
    let mut refs = Vec::with_capacity(tags.len());
    for (i, tag) in tags.into_iter().enumerate() {
        let name = tag
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad(format!("spec.tags[{i}] has no name")))?;
        let pull_spec = tag
            .from
            .and_then(|f| f.name)
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| bad(format!("spec.tags[{i}] ({name}) has no from.name")))?;
        refs.push(ImageReference {
            name,
            pull_spec: pull_spec.trim().to_string(),
        });
    }
    Ok(refs)
}

/// Streams one layer blob (gzip- or zstd-compressed tar, or plain tar, detected by the magic
/// bytes) and returns the image-references entries if the layer holds
/// `release-manifests/image-references` (with or without a leading `./` or `/`), `Ok(None)`
/// otherwise. Only that file is buffered.
///
/// The function returns as soon as the file is parsed, without draining the rest of the stream:
/// a caller that verifies the blob digest over this same stream must drain it afterwards. A
/// caller looking at several layers should go from the top layer down and stop at the first
/// hit (a higher layer's copy wins).
pub fn image_references_from_layer<R: Read>(
    layer: R,
) -> Result<Option<Vec<ImageReference>>, SourceError> {
    let layer_err = |what: &str, source: std::io::Error| SourceError::Layer {
        what: format!("release layer: {what}"),
        source,
    };
    let reader = stream::decompress(layer).map_err(|e| layer_err("reading the layer header", e))?;
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| layer_err("reading the tar stream", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| layer_err("reading a tar entry", e))?;
        let path = entry
            .path()
            .map_err(|e| layer_err("reading a tar entry path", e))?;
        let Some(path) = stream::normalize(&path) else {
            continue;
        };
        if path != IMAGE_REFERENCES_PATH || !entry.header().entry_type().is_file() {
            continue;
        }
        let mut json = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0).min(16 << 20));
        entry
            .read_to_end(&mut json)
            .map_err(|e| layer_err(&format!("reading {path}"), e))?;
        return parse_image_references(&json).map(Some);
    }
    Ok(None)
}

/// TALM's filter: keep an entry unless its name or its pull spec is excluded.
///
/// TALM greps the joined line `name$pullspec`; here the name and the pull spec are matched
/// separately, so a pattern never spans the two, `^` anchors at the start of either and `$`
/// at the end of either (the documented intent: "the patterns match against both the tag name
/// and the pull spec").
pub fn filter_release(refs: Vec<ImageReference>, exclude: &ExcludePatterns) -> Vec<ImageReference> {
    refs.into_iter()
        .filter(|r| !exclude.excludes(&r.name) && !exclude.excludes(&r.pull_spec))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::io::Write;

    fn digest(i: usize) -> String {
        format!("sha256:{i:064x}")
    }

    fn image_references(names: &[&str]) -> Vec<u8> {
        let tags: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                serde_json::json!({
                    "name": n,
                    "annotations": {"io.openshift.build.source-location": "https://github.com/openshift/x"},
                    "from": {"kind": "DockerImage", "name": format!("quay.io/openshift-release-dev/ocp-v4.0-art-dev@{}", digest(i))},
                    "generation": 2,
                    "importPolicy": {},
                    "referencePolicy": {"type": "Source"}
                })
            })
            .collect();
        serde_json::to_vec_pretty(&serde_json::json!({
            "kind": "ImageStream",
            "apiVersion": "image.openshift.io/v1",
            "metadata": {"name": "4.16.3", "creationTimestamp": null},
            "spec": {"lookupPolicy": {"local": false}, "tags": tags},
            "status": {"dockerImageRepository": ""}
        }))
        .unwrap()
    }

    /// A header whose name is written raw, so that absolute paths (which `tar::Builder`
    /// refuses) can be produced too.
    fn header(path: &str, size: u64, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_old();
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(kind);
        h.set_cksum();
        h
    }

    fn add_file(b: &mut tar::Builder<impl Write>, path: &str, data: &[u8]) {
        b.append(
            &header(path, data.len() as u64, tar::EntryType::Regular),
            data,
        )
        .unwrap();
    }

    fn add_dir(b: &mut tar::Builder<impl Write>, path: &str) {
        b.append(&header(path, 0, tar::EntryType::Directory), &[][..])
            .unwrap();
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    /// A reader that yields `left` bytes (a 64 KiB pseudo-random block, repeated) without ever
    /// holding more than that block.
    struct Filler {
        left: u64,
        block: Vec<u8>,
        at: usize,
    }
    impl Filler {
        fn new(left: u64) -> Self {
            let mut state = 7u64;
            let block = (0..64 * 1024)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 56) as u8
                })
                .collect();
            Filler { left, block, at: 0 }
        }
    }
    impl Read for Filler {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = (buf.len() as u64)
                .min(self.left)
                .min((self.block.len() - self.at) as u64) as usize;
            buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
            self.at = (self.at + n) % self.block.len();
            self.left -= n as u64;
            Ok(n)
        }
    }

    /// Counts the bytes read through it and the largest single read.
    struct Counting<R> {
        inner: R,
        total: u64,
    }
    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.total += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn parses_the_image_stream() {
        let refs = parse_image_references(&image_references(&["cli", "ovn-kubernetes"])).unwrap();
        assert_eq!(
            refs,
            vec![
                ImageReference {
                    name: "cli".into(),
                    pull_spec: format!(
                        "quay.io/openshift-release-dev/ocp-v4.0-art-dev@{}",
                        digest(0)
                    )
                },
                ImageReference {
                    name: "ovn-kubernetes".into(),
                    pull_spec: format!(
                        "quay.io/openshift-release-dev/ocp-v4.0-art-dev@{}",
                        digest(1)
                    )
                },
            ]
        );
    }

    #[test]
    fn malformed_image_references_name_the_problem() {
        let cases: [(&[u8], &str); 5] = [
            (b"{not json", "not an ImageStream"),
            (br#"{"kind":"ImageStream"}"#, "no spec"),
            (br#"{"spec":{}}"#, "no spec.tags"),
            (br#"{"spec":{"tags":[{"from":{"name":"quay.io/a/b:1"}}]}}"#, "spec.tags[0] has no name"),
            (br#"{"spec":{"tags":[{"name":"a","from":{"name":"quay.io/a/b:1"}},{"name":"etcd","from":{}}]}}"#, "spec.tags[1] (etcd) has no from.name"),
        ];
        for (json, needle) in cases {
            let e = parse_image_references(json).unwrap_err().to_string();
            assert!(e.starts_with("release-manifests/image-references: "), "{e}");
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn finds_the_file_in_gzip_and_plain_layers_with_any_path_prefix() {
        let json = image_references(&["a", "b", "c"]);
        for (prefix, compress) in [
            ("", false),
            ("./", true),
            ("/", false),
            ("./", false),
            ("", true),
        ] {
            let mut b = tar::Builder::new(Vec::new());
            add_dir(&mut b, &format!("{prefix}release-manifests/"));
            add_file(
                &mut b,
                &format!("{prefix}release-manifests/0000_00_cluster-version-operator_01.yaml"),
                b"kind: X\n",
            );
            add_file(
                &mut b,
                &format!("{prefix}release-manifests/image-references"),
                &json,
            );
            add_file(
                &mut b,
                &format!("{prefix}release-manifests/release-metadata"),
                b"{}",
            );
            let tar = b.into_inner().unwrap();
            let blob = if compress { gzip(&tar) } else { tar };
            let refs = image_references_from_layer(&blob[..])
                .unwrap()
                .expect("file present");
            assert_eq!(
                refs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                ["a", "b", "c"],
                "{prefix} {compress}"
            );
        }
    }

    #[test]
    fn a_layer_without_the_file_gives_none() {
        let mut b = tar::Builder::new(Vec::new());
        add_file(&mut b, "usr/bin/cluster-version-operator", b"\x7fELF");
        add_file(&mut b, "release-manifests/image-references.bak", b"{}");
        add_file(&mut b, "other/release-manifests/image-references", b"{}");
        add_dir(&mut b, "release-manifests/image-references/");
        let blob = gzip(&b.into_inner().unwrap());
        assert_eq!(image_references_from_layer(&blob[..]).unwrap(), None);
        // An empty stream is an empty tar.
        assert_eq!(image_references_from_layer(&[][..]).unwrap(), None);
    }

    /// Writes a layer (filler, then the file) into a pipe from a background thread, so the
    /// whole layer never exists in memory, and reads it back through the parser.
    fn stream_through_pipe(filler: u64, compress: bool) -> u64 {
        let (mut rx, tx) = std::io::pipe().unwrap();
        let json = image_references(&["cli"]);
        let writer = std::thread::spawn(move || {
            fn write_layer<W: Write>(w: W, filler: u64, json: &[u8]) -> std::io::Result<W> {
                let mut b = tar::Builder::new(w);
                b.append(
                    &header("usr/lib/filler.bin", filler, tar::EntryType::Regular),
                    Filler::new(filler),
                )?;
                b.append(
                    &header(
                        "release-manifests/image-references",
                        json.len() as u64,
                        tar::EntryType::Regular,
                    ),
                    json,
                )?;
                b.into_inner()
            }
            // The reader stops at the file; a broken pipe for the tail is fine.
            let _ = if compress {
                write_layer(
                    flate2::write::GzEncoder::new(tx, flate2::Compression::fast()),
                    filler,
                    &json,
                )
                .and_then(|gz| gz.finish())
                .map(drop)
            } else {
                write_layer(tx, filler, &json).map(drop)
            };
        });
        let mut counting = Counting {
            inner: &mut rx,
            total: 0,
        };
        let refs = image_references_from_layer(&mut counting)
            .unwrap()
            .expect("found after the filler");
        assert_eq!(refs.len(), 1);
        let total = counting.total;
        drop(rx);
        writer.join().unwrap();
        total
    }

    #[test]
    fn streams_a_large_layer_without_buffering_it() {
        // 256 MiB plain tar through a 64 KiB pipe.
        const BIG: u64 = 256 << 20;
        let read = stream_through_pipe(BIG, false);
        assert!(read > BIG, "the filler was streamed through ({read} bytes)");
        // A gzip layer with 8 MiB of incompressible filler.
        const SMALL: u64 = 8 << 20;
        let read = stream_through_pipe(SMALL, true);
        assert!(
            read > SMALL,
            "the compressed filler was streamed through ({read} bytes)"
        );
    }

    #[test]
    fn a_truncated_or_corrupt_layer_is_an_error() {
        let mut b = tar::Builder::new(Vec::new());
        add_file(
            &mut b,
            "release-manifests/image-references",
            &image_references(&["a"]),
        );
        let blob = gzip(&b.into_inner().unwrap());
        let e = image_references_from_layer(&blob[..blob.len() / 2])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("release layer: "), "{e}");
        let mut corrupt = blob.clone();
        for b in &mut corrupt[12..40] {
            *b ^= 0x5a;
        }
        assert!(image_references_from_layer(&corrupt[..]).is_err());
    }

    #[test]
    fn filter_matches_name_or_pull_spec() {
        let refs = vec![
            ImageReference {
                name: "aws-ebs-csi-driver".into(),
                pull_spec: "quay.io/ocp/art@sha256:1".into(),
            },
            ImageReference {
                name: "cli".into(),
                pull_spec: "quay.io/ocp/art@sha256:2".into(),
            },
            ImageReference {
                name: "etcd".into(),
                pull_spec: "mirror.example/vsphere-images/etcd:1".into(),
            },
            ImageReference {
                name: "ironic".into(),
                pull_spec: "quay.io/ocp/art@sha256:3".into(),
            },
        ];
        let kept = filter_release(
            refs.clone(),
            &ExcludePatterns::new(&["aws".into(), "vsphere".into()]).unwrap(),
        );
        assert_eq!(
            kept.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["cli", "ironic"]
        );
        let kept = filter_release(refs.clone(), &ExcludePatterns::new(&[]).unwrap());
        assert_eq!(kept, refs);
        // `^` anchors at the start of the name and of the pull spec.
        let kept = filter_release(
            refs,
            &ExcludePatterns::new(&["^mirror".into(), "^iron".into()]).unwrap(),
        );
        assert_eq!(
            kept.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["aws-ebs-csi-driver", "cli"]
        );
    }
}
