//! The node's registry configuration, `containers-registries.conf(5)`: where each image is
//! pulled from. Version 2 `[[registry]]` tables (`prefix`, `location`, `insecure`, `blocked`,
//! `mirror-by-digest-only`, `[[registry.mirror]]` with `location`, `insecure`,
//! `pull-from-mirror`), plus `registries.conf.d/*.conf` drop-ins merged in lexical order: a
//! drop-in's entry for a prefix replaces the earlier one, as containers/image does. Version 1
//! `[registries.insecure]` and `[registries.block]` lists become insecure/blocked entries; other
//! keys (`unqualified-search-registries`, `short-name-mode`, `[aliases]`, ...) are not needed
//! to pull fully qualified references and are ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ImageRef, SourceError};

/// One place to pull an image from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The pull spec at that place.
    pub pull_spec: String,
    /// Plain HTTP allowed and TLS not verified.
    pub insecure: bool,
}

/// When a mirror is used (`pull-from-mirror`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PullFrom {
    All,
    DigestOnly,
    TagOnly,
}

#[derive(Clone, Debug)]
struct Mirror {
    location: String,
    insecure: bool,
    pull_from: PullFrom,
}

#[derive(Clone, Debug)]
struct Registry {
    prefix: String,
    /// Empty for wildcard prefixes without a location (the reference's own host is used).
    location: String,
    insecure: bool,
    blocked: bool,
    mirror_by_digest_only: bool,
    mirrors: Vec<Mirror>,
    file: PathBuf,
}

/// The merged registry configuration.
#[derive(Clone, Debug, Default)]
pub struct Mirrors {
    registries: Vec<Registry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ConfToml {
    #[serde(default)]
    registry: Option<Vec<RegistryToml>>,
    #[serde(default)]
    registries: Option<V1Toml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RegistryToml {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<MirrorToml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct MirrorToml {
    #[serde(default)]
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    pull_from_mirror: String,
}

#[derive(Deserialize)]
struct V1Toml {
    #[serde(default)]
    insecure: Option<V1List>,
    #[serde(default)]
    block: Option<V1List>,
}

#[derive(Deserialize)]
struct V1List {
    #[serde(default)]
    registries: Vec<String>,
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A location without a scheme or trailing slash (`parseLocation` in containers/image).
fn clean_location(value: &str, field: &str) -> Result<String, String> {
    let trimmed = value.trim().trim_end_matches('/');
    if trimmed.contains("://") {
        return Err(format!("{field} {value:?}: URI schemes are not supported"));
    }
    Ok(trimmed.to_string())
}

/// Parses one file into registry entries (in file order).
fn parse_doc(file: &Path, text: &str) -> Result<Vec<Registry>, SourceError> {
    let err = |line: Option<usize>, reason: String| SourceError::RegistriesConf {
        file: file.to_path_buf(),
        line,
        reason,
    };
    let conf: ConfToml = toml::from_str(text).map_err(|e| {
        err(
            e.span().map(|s| line_of(text, s.start)),
            e.message().to_string(),
        )
    })?;
    let mut out = Vec::new();
    if let Some(v1) = conf.registries {
        if conf.registry.is_some() {
            return Err(err(
                None,
                "mixing the v1 [registries.*] tables and v2 [[registry]] tables is not supported"
                    .into(),
            ));
        }
        let mut add = |host: &str, insecure: bool, blocked: bool| -> Result<(), SourceError> {
            let location = clean_location(host, "registry").map_err(|r| err(None, r))?;
            if let Some(r) = out
                .iter_mut()
                .find(|r: &&mut Registry| r.prefix == location)
            {
                r.insecure |= insecure;
                r.blocked |= blocked;
            } else {
                out.push(Registry {
                    prefix: location.clone(),
                    location,
                    insecure,
                    blocked,
                    mirror_by_digest_only: false,
                    mirrors: Vec::new(),
                    file: file.to_path_buf(),
                });
            }
            Ok(())
        };
        for host in v1.insecure.map(|l| l.registries).unwrap_or_default() {
            add(&host, true, false)?;
        }
        for host in v1.block.map(|l| l.registries).unwrap_or_default() {
            add(&host, false, true)?;
        }
        return Ok(out);
    }
    for (i, reg) in conf.registry.unwrap_or_default().into_iter().enumerate() {
        let what = |r: String| err(None, format!("[[registry]] #{}: {r}", i + 1));
        let location = clean_location(&reg.location, "location").map_err(what)?;
        let prefix = if reg.prefix.trim().is_empty() {
            location.clone()
        } else {
            clean_location(&reg.prefix, "prefix").map_err(what)?
        };
        if prefix.is_empty() {
            return Err(what("neither prefix nor location is set".into()));
        }
        if let Some(domain) = prefix.strip_prefix("*.") {
            if domain.is_empty() || domain.contains(['/', '*']) {
                return Err(what(format!(
                    "wildcarded prefix {prefix:?} must be *.host, with no path"
                )));
            }
        } else if prefix.contains('*') {
            return Err(what(format!(
                "prefix {prefix:?}: '*' is only allowed as a leading \"*.\""
            )));
        } else if location.is_empty() {
            return Err(what(format!("registry {prefix:?} has no location")));
        }
        let mut mirrors = Vec::new();
        for (j, m) in reg.mirror.into_iter().enumerate() {
            let mwhat = |r: String| what(format!("mirror #{}: {r}", j + 1));
            let mlocation = clean_location(&m.location, "location").map_err(mwhat)?;
            if mlocation.is_empty() {
                return Err(mwhat("no location".into()));
            }
            let pull_from = match m.pull_from_mirror.as_str() {
                "" | "all" => PullFrom::All,
                "digest-only" => PullFrom::DigestOnly,
                "tag-only" => PullFrom::TagOnly,
                other => {
                    return Err(mwhat(format!(
                        "pull-from-mirror {other:?} is not one of all, digest-only, tag-only"
                    )));
                }
            };
            if reg.mirror_by_digest_only && pull_from != PullFrom::All {
                return Err(mwhat(
                    "pull-from-mirror cannot be set when the registry has mirror-by-digest-only"
                        .into(),
                ));
            }
            mirrors.push(Mirror {
                location: mlocation,
                insecure: m.insecure,
                pull_from,
            });
        }
        if out.iter().any(|r: &Registry| r.prefix == prefix) {
            return Err(what(format!(
                "prefix {prefix:?} is defined twice in this file"
            )));
        }
        out.push(Registry {
            prefix,
            location,
            insecure: reg.insecure,
            blocked: reg.blocked,
            mirror_by_digest_only: reg.mirror_by_digest_only,
            mirrors,
            file: file.to_path_buf(),
        });
    }
    Ok(out)
}

/// Reads a file; a missing one is `None`.
fn read_optional(path: &Path) -> Result<Option<String>, SourceError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SourceError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// How long a prefix of `name` (the reference string) `prefix` matches, or `None`
/// (`refMatchingPrefix` in containers/image: a match must end at the end of the reference or
/// before `/`, `:` or `@`; `*.host` matches sub-domains of `host`).
fn matching_prefix(reference: &str, prefix: &str) -> Option<usize> {
    let boundary =
        |at: usize| at == reference.len() || matches!(reference.as_bytes()[at], b'/' | b':' | b'@');
    if let Some(domain) = prefix.strip_prefix('*') {
        // `domain` is `.host`: the reference's host must end with it.
        let host_end = reference.find('/').unwrap_or(reference.len());
        let host = &reference[..host_end];
        let host_no_port = host.split(':').next().unwrap_or(host);
        return (host_no_port.ends_with(domain) && host_no_port.len() > domain.len())
            .then_some(host_no_port.len());
    }
    (reference.starts_with(prefix) && boundary(prefix.len())).then_some(prefix.len())
}

impl Mirrors {
    /// Loads `<host_root>/etc/containers/registries.conf` and
    /// `<host_root>/etc/containers/registries.conf.d/*.conf` (lexical order). Missing files
    /// mean no mirrors.
    pub fn load(host_root: &Path) -> Result<Mirrors, SourceError> {
        let main = host_root.join("etc/containers/registries.conf");
        let dropins = host_root.join("etc/containers/registries.conf.d");
        let mut docs = Vec::new();
        if let Some(text) = read_optional(&main)? {
            docs.push((main, text));
        }
        let mut paths = match std::fs::read_dir(&dropins) {
            Ok(dir) => dir
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| SourceError::Io {
                    path: dropins.clone(),
                    source,
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(SourceError::Io {
                    path: dropins,
                    source,
                });
            }
        };
        paths.retain(|p| p.extension().is_some_and(|x| x == "conf") && !p.is_dir());
        paths.sort();
        for path in paths {
            if let Some(text) = read_optional(&path)? {
                docs.push((path, text));
            }
        }
        Self::from_toml_docs(&docs)
    }

    /// Merges documents in order (the main file first, then the drop-ins): an entry for a
    /// prefix replaces an earlier document's entry for the same prefix.
    pub fn from_toml_docs(docs: &[(PathBuf, String)]) -> Result<Mirrors, SourceError> {
        let mut registries: Vec<Registry> = Vec::new();
        for (path, text) in docs {
            for reg in parse_doc(path, text)? {
                match registries.iter_mut().find(|r| r.prefix == reg.prefix) {
                    Some(existing) => *existing = reg,
                    None => registries.push(reg),
                }
            }
        }
        Ok(Mirrors { registries })
    }

    /// True when no registry is configured.
    pub fn is_empty(&self) -> bool {
        self.registries.is_empty()
    }

    /// Where to pull `pull_spec` from, in order: each usable mirror of the registry entry with
    /// the longest matching prefix (mirrors of a `mirror-by-digest-only` registry, or with
    /// `pull-from-mirror = "digest-only"`, are skipped for references without a digest;
    /// `tag-only` mirrors are skipped for references with one), then the registry's own
    /// location unless it is `blocked`. A blocked registry's mirrors are still used, which is
    /// how a disconnected site says "never contact the source". An unmatched image is pulled
    /// from where it says, securely. All blocked with no mirror left is an error.
    pub fn candidates(&self, pull_spec: &str) -> Result<Vec<Candidate>, SourceError> {
        let image: ImageRef = pull_spec.parse()?;
        let reference = image.to_string();
        let best = self
            .registries
            .iter()
            .filter_map(|r| matching_prefix(&reference, &r.prefix).map(|len| (len, r)))
            .fold(None::<(usize, &Registry)>, |best, (len, r)| match best {
                Some((b, _)) if b >= len => best,
                _ => Some((len, r)),
            });
        let Some((matched, registry)) = best else {
            return Ok(vec![Candidate {
                pull_spec: reference,
                insecure: false,
            }]);
        };
        // The matched prefix of the name is replaced; the tag and digest are kept.
        let name = image.name();
        let rest = &name[matched.min(name.len())..];
        let rewrite = |location: &str| -> Result<String, SourceError> {
            Ok(image
                .with_registry(&format!("{location}{rest}"))?
                .to_string())
        };
        let digested = image.is_digest();
        let mut out = Vec::new();
        if !registry.mirror_by_digest_only || digested {
            for m in &registry.mirrors {
                let usable = match m.pull_from {
                    PullFrom::All => true,
                    PullFrom::DigestOnly => digested,
                    PullFrom::TagOnly => !digested,
                };
                if usable {
                    out.push(Candidate {
                        pull_spec: rewrite(&m.location)?,
                        insecure: m.insecure,
                    });
                }
            }
        }
        if !registry.blocked {
            let pull_spec = if registry.location.is_empty() {
                reference.clone()
            } else {
                rewrite(&registry.location)?
            };
            out.push(Candidate {
                pull_spec,
                insecure: registry.insecure,
            });
        }
        if out.is_empty() {
            return Err(SourceError::Blocked {
                image: reference,
                prefix: registry.prefix.clone(),
                file: registry.file.clone(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    const MAIN: &str = r#"
unqualified-search-registries = ["registry.access.redhat.com", "docker.io"]
short-name-mode = "enforcing"

[[registry]]
prefix = ""
location = "quay.io/openshift-release-dev/ocp-release"
mirror-by-digest-only = true

[[registry.mirror]]
location = "mirror.local:5000/ocp4/openshift4"

[[registry]]
prefix = ""
location = "quay.io/openshift-release-dev/ocp-v4.0-art-dev"
mirror-by-digest-only = true

[[registry.mirror]]
location = "mirror.local:5000/ocp4/openshift4"

[[registry]]
location = "registry.redhat.io"
blocked = true

[[registry.mirror]]
location = "mirror.local:5000/redhat"
insecure = true

[[registry]]
location = "quay.io"

[[registry.mirror]]
location = "old-mirror.local/quay"

[[registry]]
location = "insecure.local:8080"
insecure = true

[[registry]]
prefix = "*.corp.example"
insecure = true
"#;

    const DROPIN_A: &str = r#"
# Replaces the main file's quay.io entry.
[[registry]]
location = "quay.io"

[[registry.mirror]]
location = "mirror.local:5000/quay"
pull-from-mirror = "digest-only"

[[registry.mirror]]
location = "tags.local/quay"
pull-from-mirror = "tag-only"

[[registry]]
prefix = "docker.io/library"
location = "docker.io/library"
blocked = true
"#;

    const DROPIN_B: &str = r#"
[[registry]]
prefix = "example.com/foo"
location = "internal.example.com/bar"
"#;

    fn mirrors() -> Mirrors {
        Mirrors::from_toml_docs(&[
            ("/etc/containers/registries.conf".into(), MAIN.into()),
            (
                "/etc/containers/registries.conf.d/01-a.conf".into(),
                DROPIN_A.into(),
            ),
            (
                "/etc/containers/registries.conf.d/02-b.conf".into(),
                DROPIN_B.into(),
            ),
        ])
        .unwrap()
    }

    fn specs(c: &[Candidate]) -> Vec<(&str, bool)> {
        c.iter()
            .map(|c| (c.pull_spec.as_str(), c.insecure))
            .collect()
    }

    #[test]
    fn digest_only_mirrors_for_the_release() {
        let m = mirrors();
        let c = m
            .candidates(&format!(
                "quay.io/openshift-release-dev/ocp-v4.0-art-dev@{D}"
            ))
            .unwrap();
        assert_eq!(
            specs(&c),
            [
                (
                    format!("mirror.local:5000/ocp4/openshift4@{D}").as_str(),
                    false
                ),
                (
                    format!("quay.io/openshift-release-dev/ocp-v4.0-art-dev@{D}").as_str(),
                    false
                )
            ]
        );
        // A tag reference skips digest-only mirrors: only the source.
        let c = m
            .candidates("quay.io/openshift-release-dev/ocp-release:4.16.3-x86_64")
            .unwrap();
        assert_eq!(
            specs(&c),
            [(
                "quay.io/openshift-release-dev/ocp-release:4.16.3-x86_64",
                false
            )]
        );
    }

    #[test]
    fn longest_prefix_and_dropin_replacement() {
        let m = mirrors();
        // quay.io (from the drop-in, not the main file): digest → digest-only mirror; tag → tag-only mirror.
        let c = m.candidates(&format!("quay.io/coreos/etcd@{D}")).unwrap();
        assert_eq!(
            specs(&c),
            [
                (
                    format!("mirror.local:5000/quay/coreos/etcd@{D}").as_str(),
                    false
                ),
                (format!("quay.io/coreos/etcd@{D}").as_str(), false)
            ]
        );
        let c = m.candidates("quay.io/coreos/etcd:v3.5").unwrap();
        assert_eq!(
            specs(&c),
            [
                ("tags.local/quay/coreos/etcd:v3.5", false),
                ("quay.io/coreos/etcd:v3.5", false)
            ]
        );
        assert!(
            !c.iter().any(|c| c.pull_spec.contains("old-mirror")),
            "the drop-in replaced the main entry"
        );
        // A prefix must end at a component boundary.
        let c = m
            .candidates("quay.io/openshift-release-dev/ocp-release-nightly:x")
            .unwrap();
        assert_eq!(
            specs(&c),
            [
                (
                    "tags.local/quay/openshift-release-dev/ocp-release-nightly:x",
                    false
                ),
                ("quay.io/openshift-release-dev/ocp-release-nightly:x", false)
            ]
        );
        // A location different from the prefix rewrites the source itself.
        let c = m.candidates("example.com/foo/app:1").unwrap();
        assert_eq!(specs(&c), [("internal.example.com/bar/app:1", false)]);
    }

    #[test]
    fn blocked_registries_use_mirrors_only() {
        let m = mirrors();
        let c = m
            .candidates("registry.redhat.io/openshift4/ose-cli:v4.16")
            .unwrap();
        assert_eq!(
            specs(&c),
            [("mirror.local:5000/redhat/openshift4/ose-cli:v4.16", true)]
        );
        let e = m.candidates("busybox").unwrap_err().to_string();
        assert!(
            e.contains("docker.io/library/busybox")
                && e.contains("docker.io/library")
                && e.contains("01-a.conf")
                && e.contains("blocked"),
            "{e}"
        );
        // docker.io outside library/ is not blocked and not mirrored.
        assert_eq!(
            specs(&m.candidates("bitnami/redis:7").unwrap()),
            [("docker.io/bitnami/redis:7", false)]
        );
    }

    #[test]
    fn insecure_and_wildcards() {
        let m = mirrors();
        assert_eq!(
            specs(&m.candidates("insecure.local:8080/a/b:1").unwrap()),
            [("insecure.local:8080/a/b:1", true)]
        );
        assert_eq!(
            specs(&m.candidates("insecure.local/a/b:1").unwrap()),
            [("insecure.local/a/b:1", false)],
            "the port is part of the prefix"
        );
        assert_eq!(
            specs(&m.candidates("reg.corp.example/a:1").unwrap()),
            [("reg.corp.example/a:1", true)]
        );
        assert_eq!(
            specs(&m.candidates("a.b.corp.example:5000/a:1").unwrap()),
            [("a.b.corp.example:5000/a:1", true)]
        );
        assert_eq!(
            specs(&m.candidates("corp.example/a:1").unwrap()),
            [("corp.example/a:1", false)],
            "*.host matches sub-domains only"
        );
        assert_eq!(
            specs(&m.candidates("unrelated.io/x").unwrap()),
            [("unrelated.io/x", false)]
        );
    }

    #[test]
    fn v1_tables_and_empty_config() {
        let m = Mirrors::from_toml_docs(&[(
            "/r.conf".into(),
            "[registries.search]\nregistries = ['docker.io']\n[registries.insecure]\nregistries = ['http-only.local:5000']\n[registries.block]\nregistries = ['evil.io']\n".into(),
        )])
        .unwrap();
        assert_eq!(
            specs(&m.candidates("http-only.local:5000/a:1").unwrap()),
            [("http-only.local:5000/a:1", true)]
        );
        assert!(m.candidates("evil.io/a:1").is_err());
        let empty = Mirrors::from_toml_docs(&[]).unwrap();
        assert!(empty.is_empty());
        assert_eq!(
            specs(&empty.candidates("quay.io/a/b:1").unwrap()),
            [("quay.io/a/b:1", false)]
        );
    }

    #[test]
    fn malformed_files_name_file_and_line() {
        let cases = [
            (
                "[[registry]]\nlocation = \"quay.io\"\ninsecure = \"yes\"\n",
                Some(3),
                "invalid type",
            ),
            ("[[registry]\nlocation = 1\n", Some(1), ""),
            (
                "\n\nlocation = \"a\"\nlocation = \"b\"\n",
                Some(4),
                "duplicate",
            ),
            (
                "[[registry]]\nlocation = \"https://quay.io\"\n",
                None,
                "URI schemes are not supported",
            ),
            (
                "[[registry]]\ninsecure = true\n",
                None,
                "neither prefix nor location",
            ),
            (
                "[[registry]]\nprefix = \"quay.io/x\"\n",
                None,
                "has no location",
            ),
            ("[[registry]]\nprefix = \"*.a/b\"\n", None, "must be *.host"),
            (
                "[[registry]]\nlocation = \"quay.io\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"sometimes\"\n",
                None,
                "mirror #1: pull-from-mirror \"sometimes\"",
            ),
            (
                "[[registry]]\nlocation = \"quay.io\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"tag-only\"\n",
                None,
                "cannot be set",
            ),
            (
                "[[registry]]\nlocation = \"quay.io\"\n[[registry]]\nlocation = \"quay.io\"\n",
                None,
                "[[registry]] #2: prefix \"quay.io\" is defined twice",
            ),
            (
                "[registries.block]\nregistries = ['a']\n[[registry]]\nlocation = \"quay.io\"\n",
                None,
                "mixing",
            ),
        ];
        for (text, line, needle) in cases {
            let e = Mirrors::from_toml_docs(&[(
                "/etc/containers/registries.conf.d/99-bad.conf".into(),
                text.into(),
            )])
            .unwrap_err();
            match &e {
                SourceError::RegistriesConf { file, line: l, .. } => {
                    assert_eq!(
                        file,
                        Path::new("/etc/containers/registries.conf.d/99-bad.conf")
                    );
                    assert_eq!(*l, line, "{e}");
                }
                other => panic!("{other:?}"),
            }
            let msg = e.to_string();
            let expected_prefix = match line {
                Some(l) => format!("/etc/containers/registries.conf.d/99-bad.conf:{l}: "),
                None => "/etc/containers/registries.conf.d/99-bad.conf: ".into(),
            };
            assert!(msg.starts_with(&expected_prefix), "{msg}");
            assert!(msg.contains(needle), "{msg} lacks {needle}");
        }
        // Bad pull specs are reference errors.
        let e = mirrors().candidates("quay.io/A/b").unwrap_err().to_string();
        assert!(e.contains("\"quay.io/A/b\""), "{e}");
    }

    #[test]
    fn load_reads_main_and_dropins_in_lexical_order() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("etc/containers/registries.conf.d");
        // No files at all: no mirrors.
        assert!(Mirrors::load(root.path()).unwrap().is_empty());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(root.path().join("etc/containers/registries.conf"), MAIN).unwrap();
        std::fs::write(dir.join("10-z.conf"), "[[registry]]\nlocation = \"quay.io\"\n[[registry.mirror]]\nlocation = \"second.local\"\n").unwrap();
        std::fs::write(dir.join("05-a.conf"), "[[registry]]\nlocation = \"quay.io\"\n[[registry.mirror]]\nlocation = \"first.local\"\n").unwrap();
        std::fs::write(dir.join("README"), "not toml [[[").unwrap();
        std::fs::write(dir.join("20-x.conf.bak"), "not toml [[[").unwrap();
        let m = Mirrors::load(root.path()).unwrap();
        assert_eq!(
            specs(&m.candidates("quay.io/a/b:1").unwrap()),
            [("second.local/a/b:1", false), ("quay.io/a/b:1", false)]
        );
        // Only drop-ins, no main file.
        std::fs::remove_file(root.path().join("etc/containers/registries.conf")).unwrap();
        let m = Mirrors::load(root.path()).unwrap();
        assert_eq!(
            specs(&m.candidates("registry.redhat.io/a:1").unwrap()),
            [("registry.redhat.io/a:1", false)]
        );
        // A broken drop-in is named.
        std::fs::write(dir.join("30-broken.conf"), "[[registry]]\nlocation = \n").unwrap();
        let e = Mirrors::load(root.path()).unwrap_err().to_string();
        assert!(e.contains("30-broken.conf:2"), "{e}");
    }
}
