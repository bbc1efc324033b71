//! Image references (pull specs): `[registry[:port]/]repository[:tag][@algorithm:hex]`, with the
//! docker.io defaults of `docker pull` and containers/image (no registry → `docker.io`, a
//! single-component docker.io repository gets `library/`, `index.docker.io` → `docker.io`).

use std::fmt;
use std::str::FromStr;

use super::SourceError;

/// The registry used when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A parsed image reference. [`fmt::Display`] gives back the canonical pull spec
/// (`registry/repository[:tag][@digest]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// Registry host, with the port if any (`quay.io`, `mirror.local:5000`).
    pub registry: String,
    /// Repository path inside the registry (`openshift-release-dev/ocp-release`).
    pub repository: String,
    /// The tag, if the reference has one.
    pub tag: Option<String>,
    /// The digest (`sha256:<64 hex>`), if the reference has one.
    pub digest: Option<String>,
}

fn invalid(reference: &str, reason: impl Into<String>) -> SourceError {
    SourceError::InvalidReference {
        reference: reference.to_string(),
        reason: reason.into(),
    }
}

impl FromStr for ImageRef {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, SourceError> {
        if s.is_empty() {
            return Err(invalid(s, "empty reference"));
        }
        if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(s, format!("contains the character {c:?}")));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => {
                check_digest(digest).map_err(|r| invalid(s, r))?;
                (rest, Some(digest.to_string()))
            }
            None => (s, None),
        };
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.is_none_or(|sl| colon > sl) => {
                let tag = &rest[colon + 1..];
                check_tag(tag).map_err(|r| invalid(s, r))?;
                (&rest[..colon], Some(tag.to_string()))
            }
            _ => (rest, None),
        };
        let (registry, repository) = split_name(name).map_err(|r| invalid(s, r))?;
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// Splits `[registry/]repository` and applies the docker.io defaults.
fn split_name(name: &str) -> Result<(String, String), String> {
    if name.is_empty() {
        return Err("no repository name".into());
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
    };
    check_registry(&registry)?;
    let registry = if registry == "index.docker.io" {
        DEFAULT_REGISTRY.to_string()
    } else {
        registry
    };
    let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    check_repository(&repository)?;
    Ok((registry, repository))
}

fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let bracketed_ipv6 = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    if !host_ok && !bracketed_ipv6 {
        return Err(format!("invalid registry host {host:?}"));
    }
    if let Some(port) = port
        && (port.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(format!("invalid registry port {port:?}"));
    }
    Ok(())
}

/// Repository path components: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, separated by `/`.
fn check_repository(repository: &str) -> Result<(), String> {
    for component in repository.split('/') {
        let ok = !component.is_empty()
            && component.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            })
            && component
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && component
                .chars()
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && !component.contains("..")
            && !component.contains("___")
            && !component.contains("._")
            && !component.contains("_.")
            && !component.contains(".-")
            && !component.contains("-.")
            && !component.contains("_-")
            && !component.contains("-_");
        if !ok {
            return Err(format!(
                "invalid repository path component {component:?} (lower-case letters, digits and single separators only)"
            ));
        }
    }
    if repository.len() > 255 {
        return Err("repository name longer than 255 characters".into());
    }
    Ok(())
}

/// Tags: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid tag {tag:?}"))
    }
}

/// Digests: `algorithm:hex`; `sha256` needs 64 and `sha512` 128 lower-case hex digits.
fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!(
            "invalid digest {digest:?} (expected algorithm:hex)"
        ));
    };
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '.' | '_' | '-')
        });
    let expected_len = match algorithm {
        "sha256" => Some(64),
        "sha512" => Some(128),
        _ => None,
    };
    let hex_ok = hex.len() >= 32
        && expected_len.is_none_or(|n| hex.len() == n)
        && hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
    if algorithm_ok && hex_ok {
        Ok(())
    } else {
        Err(format!("invalid digest {digest:?}"))
    }
}

impl ImageRef {
    /// `registry/repository`: the name that registries.conf prefixes and pull-secret keys match.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry for: the digest if there is one, else the tag, else `latest`.
    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// True when the reference pins a digest.
    pub fn is_digest(&self) -> bool {
        self.digest.is_some()
    }

    /// The same tag and digest under another name: `registry_and_repository` is the complete new
    /// `host[:port]/path` (e.g. a mirror location with the rest of the repository appended).
    pub fn with_registry(&self, registry_and_repository: &str) -> Result<ImageRef, SourceError> {
        let (registry, repository) =
            split_name(registry_and_repository).map_err(|r| invalid(registry_and_repository, r))?;
        Ok(ImageRef {
            registry,
            repository,
            tag: self.tag.clone(),
            digest: self.digest.clone(),
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn p(s: &str) -> ImageRef {
        s.parse().unwrap()
    }

    #[test]
    fn docker_io_defaults() {
        let r = p("busybox");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/busybox", None)
        );
        assert_eq!(r.to_string(), "docker.io/library/busybox");
        assert_eq!(r.reference(), "latest");
        assert_eq!(
            p("busybox:1.36").to_string(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            p("bitnami/redis:7").to_string(),
            "docker.io/bitnami/redis:7"
        );
        assert_eq!(
            p("index.docker.io/nginx").to_string(),
            "docker.io/library/nginx"
        );
        assert_eq!(p("docker.io/nginx").to_string(), "docker.io/library/nginx");
        assert_eq!(p("localhost/foo").registry, "localhost");
    }

    #[test]
    fn registries_ports_tags_and_digests() {
        let r = p(&format!(
            "quay.io/openshift-release-dev/ocp-v4.0-art-dev@{D}"
        ));
        assert_eq!(r.registry, "quay.io");
        assert_eq!(r.repository, "openshift-release-dev/ocp-v4.0-art-dev");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert!(r.is_digest());
        assert_eq!(r.reference(), D);

        let r = p("mirror.local:5000/ocp4/openshift4:4.16.3-x86_64");
        assert_eq!(r.registry, "mirror.local:5000");
        assert_eq!(r.repository, "ocp4/openshift4");
        assert_eq!(r.tag.as_deref(), Some("4.16.3-x86_64"));
        assert_eq!(
            r.to_string(),
            "mirror.local:5000/ocp4/openshift4:4.16.3-x86_64"
        );

        let r = p(&format!("127.0.0.1:5000/a/b:v1@{D}"));
        assert_eq!((r.tag.as_deref(), r.reference()), (Some("v1"), D));
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/a/b:v1@{D}"));
        assert_eq!(
            p("registry.example.com:443/a_b/c__d/e-f.g").name(),
            "registry.example.com:443/a_b/c__d/e-f.g"
        );
    }

    #[test]
    fn with_registry_keeps_tag_and_digest() {
        let r = p(&format!("quay.io/ns/img:v1@{D}"));
        let m = r.with_registry("mirror:5000/cache/ns/img").unwrap();
        assert_eq!(m.to_string(), format!("mirror:5000/cache/ns/img:v1@{D}"));
        let e = r.with_registry("mirror:5000").unwrap_err().to_string();
        assert!(e.contains("mirror:5000"), "{e}");
    }

    #[test]
    fn malformed_references_name_the_culprit() {
        for (input, needle) in [
            ("", "empty"),
            ("quay.io/UPPER/x", "UPPER"),
            ("quay.io/a/b:", "invalid tag"),
            ("quay.io/a/b:-x", "invalid tag \"-x\""),
            ("quay.io/a/b@sha256:abc", "invalid digest"),
            ("quay.io/a/b@md5", "algorithm:hex"),
            ("quay.io:99999/a", "port"),
            ("quay..io/a", "host"),
            ("quay.io/a b", "' '"),
            ("quay.io//a", "component \"\""),
            ("quay.io/a/b..c", "b..c"),
        ] {
            let err = input.parse::<ImageRef>().unwrap_err().to_string();
            assert!(err.contains(&format!("{input:?}")), "{input}: {err}");
            assert!(err.contains(needle), "{input}: {err} lacks {needle}");
        }
    }
}
