//! The node's pull secret, `/var/lib/kubelet/config.json` (docker `config.json` format:
//! `{"auths": {"<key>": {"auth": "<base64 user:password>"}}}`; the legacy `.dockercfg` form
//! without `auths` is accepted too), looked up the way the kubelet does:
//!
//! - a key is `host`, `host:port` or `host[:port]/path...`, with or without an `http://` or
//!   `https://` scheme; a `/v1/` or `/v2/` path prefix is dropped (so
//!   `https://index.docker.io/v1/` is the host `index.docker.io`);
//! - it matches an image when the ports are equal, the hosts have the same number of labels and
//!   each label matches (a label may be a glob such as `*`), and the image's repository path
//!   starts with the key's path (a plain string prefix, as in the kubelet);
//! - docker.io images fall back to an `index.docker.io` key;
//! - of several matching keys, the one with the longest path wins, then a host without
//!   wildcards, then the reverse lexical order the kubelet sorts its keys in.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use super::ImageRef;
use super::SourceError;
use super::reference::DEFAULT_REGISTRY;

/// One credential, with its parsed key.
#[derive(Clone)]
struct Entry {
    key: String,
    host_labels: Vec<String>,
    port: String,
    path: String,
    username: String,
    password: String,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A pull secret. `Debug` never prints passwords.
#[derive(Clone, Debug, Default)]
pub struct PullSecret {
    entries: Vec<Entry>,
}

/// Splits `host[:port]` (lower-cased host).
fn split_host_port(hostport: &str) -> (String, String) {
    match hostport.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => {
            (h.to_ascii_lowercase(), p.to_string())
        }
        _ => (hostport.to_ascii_lowercase(), String::new()),
    }
}

/// A key as (host, port, path): scheme and `/v1/`, `/v2/` removed, path without a trailing `/`
/// only when it is the root.
fn parse_key(key: &str) -> (String, String, String) {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = if path.starts_with("/v1/") || path.starts_with("/v2/") {
        &path[3..]
    } else {
        path
    };
    let path = if path == "/" { "" } else { path };
    let (host, port) = split_host_port(hostport);
    (host, port, path.to_string())
}

/// `filepath.Match` for one host label: `*` (any run) and `?` (one character).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && glob(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

fn decode_auth(encoded: &str) -> Result<(String, String), String> {
    let encoded = encoded.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .or_else(|_| {
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded.trim_end_matches('='))
        })
        .map_err(|e| format!("`auth` is not base64: {e}"))?;
    let text =
        String::from_utf8(bytes).map_err(|_| "`auth` does not decode to UTF-8 text".to_string())?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| "`auth` does not decode to user:password".to_string())?;
    Ok((user.to_string(), password.to_string()))
}

impl PullSecret {
    /// Reads a pull secret file; a missing file is an empty secret (anonymous pulls).
    pub fn load(path: &Path) -> Result<PullSecret, SourceError> {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(&bytes, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PullSecret::default()),
            Err(source) => Err(SourceError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses pull secret JSON (errors name the file as `<pull secret>`).
    pub fn from_json(bytes: &[u8]) -> Result<PullSecret, SourceError> {
        Self::parse(bytes, Path::new("<pull secret>"))
    }

    fn parse(bytes: &[u8], path: &Path) -> Result<PullSecret, SourceError> {
        let bad = |reason: String| SourceError::PullSecret {
            path: PathBuf::from(path),
            reason,
        };
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let Value::Object(mut top) = doc else {
            return Err(bad("not a JSON object".into()));
        };
        let auths = match top.remove("auths") {
            Some(Value::Object(auths)) => auths,
            Some(Value::Null) => Default::default(),
            Some(_) => return Err(bad("`auths` is not an object".into())),
            // The legacy .dockercfg form: the keys are at the top level.
            None => top,
        };
        let mut entries = Vec::new();
        for (key, value) in auths {
            let Value::Object(fields) = value else {
                return Err(bad(format!("auths[{key:?}] is not an object")));
            };
            let text = |name: &str| -> Result<String, SourceError> {
                match fields.get(name) {
                    None | Some(Value::Null) => Ok(String::new()),
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(_) => Err(bad(format!("auths[{key:?}].{name} is not a string"))),
                }
            };
            let auth = text("auth")?;
            let (username, password) = if auth.trim().is_empty() {
                (text("username")?, text("password")?)
            } else {
                decode_auth(&auth).map_err(|r| bad(format!("auths[{key:?}]: {r}")))?
            };
            if username.is_empty() && password.is_empty() {
                continue;
            }
            let (host, port, path) = parse_key(&key);
            if host.is_empty() {
                return Err(bad(format!("auths key {key:?} has no host")));
            }
            let host_labels = host.split('.').map(str::to_string).collect();
            entries.push(Entry {
                key,
                host_labels,
                port,
                path,
                username,
                password,
            });
        }
        Ok(PullSecret { entries })
    }

    /// True when the secret holds no credentials.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn matches(entry: &Entry, host: &str, port: &str, path: &str) -> bool {
        let labels: Vec<&str> = host.split('.').collect();
        entry.port == port
            && entry.host_labels.len() == labels.len()
            && entry
                .host_labels
                .iter()
                .zip(&labels)
                .all(|(p, l)| glob(p.as_bytes(), l.as_bytes()))
            && path.starts_with(&entry.path)
    }

    /// Credentials `(username, password)` for an image, from the most specific matching key;
    /// `None` for anonymous pulls (or an unparsable pull spec).
    pub fn credentials(&self, pull_spec: &str) -> Option<(String, String)> {
        let image: ImageRef = pull_spec.parse().ok()?;
        let (host, port) = split_host_port(&image.registry);
        let path = format!("/{}", image.repository);
        let best = self
            .entries
            .iter()
            .filter(|e| Self::matches(e, &host, &port, &path))
            .max_by(|a, b| {
                let wild = |e: &Entry| e.host_labels.iter().any(|l| l.contains(['*', '?']));
                a.path
                    .len()
                    .cmp(&b.path.len())
                    .then(wild(b).cmp(&wild(a)))
                    .then(a.key.cmp(&b.key))
            })
            .or_else(|| {
                (image.registry == DEFAULT_REGISTRY)
                    .then(|| {
                        self.entries.iter().find(|e| {
                            e.host_labels.join(".") == "index.docker.io"
                                && e.port.is_empty()
                                && e.path.is_empty()
                        })
                    })
                    .flatten()
            })?;
        Some((best.username.clone(), best.password.clone()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn auth(user: &str) -> String {
        STANDARD.encode(format!("{user}:pw-{user}"))
    }

    fn secret() -> PullSecret {
        let json = serde_json::json!({
            "auths": {
                "quay.io": {"auth": auth("quay"), "email": "x@example.com"},
                "quay.io/openshift-release-dev": {"auth": auth("release")},
                "https://quay.io/openshift-release-dev/ocp-v4.0-art-dev": {"auth": auth("art")},
                "registry.redhat.io": {"username": "rh", "password": "pw-rh"},
                "mirror.local:5000": {"auth": auth("mirror")},
                "http://mirror.local:5000/special": {"auth": auth("special")},
                "*.corp.example": {"auth": auth("wild")},
                "git.corp.example": {"auth": auth("git")},
                "https://index.docker.io/v1/": {"auth": auth("hub")},
                "empty.io": {"auth": ""},
            }
        });
        PullSecret::from_json(&serde_json::to_vec(&json).unwrap()).unwrap()
    }

    fn user(s: &PullSecret, image: &str) -> Option<String> {
        s.credentials(image).map(|(u, p)| {
            assert_eq!(p, format!("pw-{u}"));
            u
        })
    }

    #[test]
    fn most_specific_key_wins() {
        let s = secret();
        assert_eq!(user(&s, "quay.io/coreos/etcd:v3").as_deref(), Some("quay"));
        assert_eq!(
            user(
                &s,
                "quay.io/openshift-release-dev/ocp-release:4.16.3-x86_64"
            )
            .as_deref(),
            Some("release")
        );
        assert_eq!(
            user(&s, "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").as_deref(),
            Some("art"),
            "scheme ignored, longest path wins"
        );
        assert_eq!(
            user(&s, "registry.redhat.io/openshift4/ose-cli:v4.16").as_deref(),
            Some("rh"),
            "username/password fields"
        );
    }

    #[test]
    fn ports_must_match() {
        let s = secret();
        assert_eq!(
            user(&s, "mirror.local:5000/ocp4/openshift4:1").as_deref(),
            Some("mirror")
        );
        assert_eq!(
            user(&s, "mirror.local:5000/special/x:1").as_deref(),
            Some("special")
        );
        assert_eq!(
            user(&s, "mirror.local/ocp4/openshift4:1"),
            None,
            "no port ≠ :5000"
        );
        assert_eq!(user(&s, "mirror.local:5001/ocp4:1"), None);
        assert_eq!(
            user(&s, "quay.io:443/coreos/etcd:v3"),
            None,
            "kubelet compares ports literally"
        );
    }

    #[test]
    fn globs_docker_hub_and_anonymous() {
        let s = secret();
        assert_eq!(
            user(&s, "git.corp.example/a:1").as_deref(),
            Some("git"),
            "exact host beats a wildcard"
        );
        assert_eq!(user(&s, "reg.corp.example/a:1").as_deref(), Some("wild"));
        assert_eq!(
            user(&s, "a.reg.corp.example/a:1"),
            None,
            "a glob label matches one label"
        );
        assert_eq!(user(&s, "busybox").as_deref(), Some("hub"));
        assert_eq!(
            user(&s, "docker.io/bitnami/redis:7").as_deref(),
            Some("hub")
        );
        assert_eq!(user(&s, "ghcr.io/a/b:1"), None);
        assert_eq!(
            user(&s, "empty.io/a:1"),
            None,
            "entries without credentials are skipped"
        );
        assert_eq!(user(&s, "not a reference"), None);
        assert!(!s.is_empty());
        assert!(!format!("{s:?}").contains("pw-"), "Debug hides passwords");
    }

    #[test]
    fn kubelet_path_prefixes_are_plain_string_prefixes() {
        let s = PullSecret::from_json(br#"{"auths":{"quay.io/foo":{"auth":"Zm9vOnB3LWZvbw=="}}}"#)
            .unwrap();
        assert_eq!(user(&s, "quay.io/foo/x:1").as_deref(), Some("foo"));
        assert_eq!(user(&s, "quay.io/foobar/x:1").as_deref(), Some("foo"));
        assert_eq!(user(&s, "quay.io/bar/x:1"), None);
    }

    #[test]
    fn legacy_dockercfg_and_explicit_docker_io_key() {
        let s = PullSecret::from_json(
            format!(r#"{{"docker.io":{{"auth":"{}"}}}}"#, auth("d")).as_bytes(),
        )
        .unwrap();
        assert_eq!(user(&s, "nginx:1").as_deref(), Some("d"));
        let s = PullSecret::from_json(br#"{"auths":{}}"#).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.credentials("quay.io/a:1"), None);
    }

    #[test]
    fn load_missing_is_anonymous_and_malformed_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert!(PullSecret::load(&path).unwrap().is_empty());
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"quay.io":{{"auth":"{}"}}}}}}"#, auth("q")),
        )
        .unwrap();
        assert_eq!(
            user(&PullSecret::load(&path).unwrap(), "quay.io/a/b:1").as_deref(),
            Some("q")
        );
        std::fs::write(&path, "{\"auths\": ").unwrap();
        let e = PullSecret::load(&path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("invalid JSON"),
            "{e}"
        );
    }

    #[test]
    fn malformed_entries_name_the_key() {
        let cases: [(&[u8], &str); 7] = [
            (b"[]", "not a JSON object"),
            (br#"{"auths":[]}"#, "`auths` is not an object"),
            (
                br#"{"auths":{"quay.io":"x"}}"#,
                "auths[\"quay.io\"] is not an object",
            ),
            (
                br#"{"auths":{"quay.io":{"auth":"!!!"}}}"#,
                "auths[\"quay.io\"]: `auth` is not base64",
            ),
            (
                br#"{"auths":{"quay.io":{"auth":"bm9jb2xvbg=="}}}"#,
                "auths[\"quay.io\"]: `auth` does not decode to user:password",
            ),
            (
                br#"{"auths":{"quay.io":{"username":1}}}"#,
                "auths[\"quay.io\"].username is not a string",
            ),
            (
                br#"{"auths":{"https:///x":{"auth":"YTpi"}}}"#,
                "has no host",
            ),
        ];
        for (json, needle) in cases {
            let e = PullSecret::from_json(json).unwrap_err().to_string();
            assert!(e.starts_with("pull secret <pull secret>: "), "{e}");
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
    }
}
