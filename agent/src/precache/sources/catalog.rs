//! File-based operator catalogs (FBC), read from an index image's layers. TALM's `olm.sh` runs
//! `opm render` on the mounted index and `parse_index.py` picks, for every `package:channel`,
//! the channel head and its bundle's `relatedImages[].image`. Here the layers are streamed
//! (gzip, zstd or plain tar), the OCI whiteouts are honoured, and only the fields needed are
//! kept in memory: bundle `properties` (which embed whole CSVs) are skipped while parsing.
//!
//! Files under the configs directory are read by extension, as FBC tooling lays them out:
//! `.json` files are a stream of concatenated JSON objects, `.yaml`/`.yml` files a stream of
//! YAML documents. Other files (`.indexignore`, READMEs, caches elsewhere) are ignored. Objects
//! of schemas other than `olm.package`, `olm.channel` and `olm.bundle` are ignored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufReader, Read};

use serde::Deserialize;
use serde_json::Value;

use super::{SourceError, stream};

/// The image config label naming the FBC directory.
pub const CONFIGS_LABEL: &str = "operators.operatorframework.io.index.configs.v1";
/// The FBC directory when the label is absent.
pub const DEFAULT_CONFIGS_DIR: &str = "/configs";
/// Where SQLite-based index images keep their database.
const DATABASE_DIR: &str = "database";

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// An `olm.package` object.
#[derive(Clone, Debug)]
struct PackageMeta {
    name: String,
    default_channel: Option<String>,
}

/// One entry of an `olm.channel`.
#[derive(Clone, Debug, Deserialize)]
struct ChannelEntry {
    name: String,
    #[serde(default)]
    replaces: Option<String>,
    #[serde(default)]
    skips: Vec<String>,
    // `skipRange` is deliberately not read: see [`Catalog::related_images`].
}

/// An `olm.channel` object.
#[derive(Clone, Debug)]
struct ChannelMeta {
    package: String,
    name: String,
    entries: Vec<ChannelEntry>,
}

#[derive(Clone, Debug, Deserialize)]
struct RelatedImage {
    #[serde(default)]
    image: String,
}

/// An `olm.bundle` object, without its properties.
#[derive(Clone, Debug)]
struct BundleMeta {
    package: String,
    name: String,
    image: String,
    related_images: Vec<String>,
}

/// What one catalog file contributes.
#[derive(Clone, Debug, Default)]
struct FileData {
    packages: Vec<PackageMeta>,
    channels: Vec<ChannelMeta>,
    bundles: Vec<BundleMeta>,
}

/// A path of interest in the merged image filesystem.
#[derive(Debug)]
enum Node {
    /// A catalog file, or why it could not be parsed (reported only if it survives the upper
    /// layers' whiteouts).
    Catalog(Result<FileData, String>),
    /// A SQLite database under `/database`.
    Sqlite,
}

/// The FBC object fields used here. Everything is taken loosely (`Value`) and checked per
/// schema, so that unrelated schemas with other shapes (`olm.deprecations`, custom ones) never
/// fail a catalog; unknown fields (notably the large `properties`) are skipped while parsing.
#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    package: Option<Value>,
    #[serde(default, rename = "defaultChannel")]
    default_channel: Option<Value>,
    #[serde(default)]
    entries: Option<Value>,
    #[serde(default)]
    image: Option<Value>,
    #[serde(default, rename = "relatedImages")]
    related_images: Option<Value>,
}

fn string_field(v: &Option<Value>, field: &str, what: &str) -> Result<String, String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(format!("{what} has no `{field}`"))
        }
        Some(other) => Err(format!("{what}: `{field}` is not a string: {other}")),
    }
}

impl Meta {
    /// Adds this object to `data`; `index` numbers the objects of the file (from 1).
    fn add_to(self, index: usize, data: &mut FileData) -> Result<(), String> {
        let schema = match &self.schema {
            Some(Value::String(s)) => s.as_str(),
            _ => return Err(format!("object #{index} has no `schema`")),
        };
        match schema {
            "olm.package" => {
                let name =
                    string_field(&self.name, "name", &format!("olm.package object #{index}"))?;
                let default_channel = match self.default_channel {
                    Some(Value::String(s)) if !s.is_empty() => Some(s),
                    _ => None,
                };
                data.packages.push(PackageMeta {
                    name,
                    default_channel,
                });
            }
            "olm.channel" => {
                let what = format!("olm.channel object #{index}");
                let name = string_field(&self.name, "name", &what)?;
                let what = format!("olm.channel {name:?} (object #{index})");
                let package = string_field(&self.package, "package", &what)?;
                let entries: Vec<ChannelEntry> = match self.entries {
                    Some(v) => serde_json::from_value(v)
                        .map_err(|e| format!("{what}: bad `entries`: {e}"))?,
                    None => Vec::new(),
                };
                data.channels.push(ChannelMeta {
                    package,
                    name,
                    entries,
                });
            }
            "olm.bundle" => {
                let what = format!("olm.bundle object #{index}");
                let name = string_field(&self.name, "name", &what)?;
                let what = format!("olm.bundle {name:?} (object #{index})");
                let package = string_field(&self.package, "package", &what)?;
                let image = match &self.image {
                    Some(Value::String(s)) => s.clone(),
                    None | Some(Value::Null) => String::new(),
                    Some(other) => return Err(format!("{what}: `image` is not a string: {other}")),
                };
                let related: Vec<RelatedImage> = match self.related_images {
                    Some(Value::Null) | None => Vec::new(),
                    Some(v) => serde_json::from_value(v)
                        .map_err(|e| format!("{what}: bad `relatedImages`: {e}"))?,
                };
                let related_images = related
                    .into_iter()
                    .map(|r| r.image)
                    .filter(|i| !i.is_empty())
                    .collect();
                data.bundles.push(BundleMeta {
                    package,
                    name,
                    image,
                    related_images,
                });
            }
            _ => {}
        }
        Ok(())
    }
}

/// Parses one catalog file from its tar entry. JSON is streamed object by object.
fn parse_file<R: Read>(reader: R, yaml: bool) -> Result<FileData, String> {
    let mut data = FileData::default();
    if yaml {
        let mut text = String::new();
        BufReader::new(reader)
            .read_to_string(&mut text)
            .map_err(|e| format!("reading: {e}"))?;
        // Bounded alias expansion: an index image is untrusted input.
        let docs = talm_shared::yaml::from_multiple(&text).map_err(|e| match e {
            talm_shared::yaml::DocError::Syntax(m) => format!("invalid YAML: {m}"),
            other => other.to_string(),
        })?;
        let mut index = 0;
        for doc in docs {
            if doc.is_null() {
                continue;
            }
            index += 1;
            let meta: Meta =
                serde_json::from_value(doc).map_err(|e| format!("object #{index}: {e}"))?;
            meta.add_to(index, &mut data)?;
        }
    } else {
        let objects =
            serde_json::Deserializer::from_reader(BufReader::with_capacity(64 * 1024, reader))
                .into_iter::<Meta>();
        for (i, meta) in objects.enumerate() {
            let meta = meta.map_err(|e| format!("invalid JSON in object #{}: {e}", i + 1))?;
            meta.add_to(i + 1, &mut data)?;
        }
    }
    Ok(data)
}

/// Builds a [`Catalog`] from an index image's layers, fed bottom to top.
#[derive(Debug)]
pub struct CatalogBuilder {
    /// The configs directory, normalized (`configs`).
    configs_dir: String,
    /// The merged view of the paths of interest so far.
    nodes: BTreeMap<String, Node>,
    layers: usize,
}

/// One layer's changes, applied once the layer has been read completely (whiteouts in a
/// layer hide lower layers only, whatever their position in the tar stream).
#[derive(Default)]
struct LayerChanges {
    /// Paths removed by `.wh.<name>` (with their subtrees).
    whiteouts: Vec<String>,
    /// Directories made opaque by `.wh..wh..opq`.
    opaque: Vec<String>,
    /// Paths that this layer replaces with a non-directory (hiding lower subtrees).
    replaced: Vec<String>,
    /// New nodes.
    nodes: Vec<(String, Node)>,
}

impl CatalogBuilder {
    /// `configs_dir` comes from the image config label [`CONFIGS_LABEL`] (default
    /// [`DEFAULT_CONFIGS_DIR`]).
    pub fn new(configs_dir: &str) -> Self {
        CatalogBuilder {
            configs_dir: stream::normalize_dir(configs_dir),
            nodes: BTreeMap::new(),
            layers: 0,
        }
    }

    fn is_relevant(&self, path: &str) -> bool {
        stream::is_under(path, &self.configs_dir) || stream::is_under(path, DATABASE_DIR)
    }

    /// Reads one layer (gzip, zstd or plain tar). Catalog files under the configs directory
    /// are parsed as they stream by; OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`) remove lower
    /// layers' files; a `*.db` under `/database` is noted; everything else is skipped.
    pub fn add_layer<R: Read>(&mut self, layer: R) -> Result<(), SourceError> {
        self.layers += 1;
        let n = self.layers;
        let layer_err = |what: String, source: std::io::Error| SourceError::Layer {
            what: format!("index layer {n}: {what}"),
            source,
        };
        let reader = stream::decompress(layer)
            .map_err(|e| layer_err("reading the layer header".into(), e))?;
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|e| layer_err("reading the tar stream".into(), e))?;
        let mut changes = LayerChanges::default();
        for entry in entries {
            let entry = entry.map_err(|e| layer_err("reading a tar entry".into(), e))?;
            let path = entry
                .path()
                .map_err(|e| layer_err("reading a tar entry path".into(), e))?;
            let Some(path) = stream::normalize(&path) else {
                continue;
            };
            let (dir, base) = match path.rsplit_once('/') {
                Some((d, b)) => (d.to_string(), b.to_string()),
                None => (String::new(), path.clone()),
            };
            if base == OPAQUE_WHITEOUT {
                changes.opaque.push(dir);
                continue;
            }
            if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) {
                let hidden = if dir.is_empty() {
                    hidden.to_string()
                } else {
                    format!("{dir}/{hidden}")
                };
                changes.whiteouts.push(hidden);
                continue;
            }
            let kind = entry.header().entry_type();
            if !kind.is_dir() {
                let subtree = format!("{path}/");
                if self
                    .nodes
                    .range(subtree.clone()..)
                    .next()
                    .is_some_and(|(k, _)| k.starts_with(&subtree))
                {
                    changes.replaced.push(path.clone());
                }
            }
            if !kind.is_file() || !self.is_relevant(&path) {
                continue;
            }
            if stream::is_under(&path, &self.configs_dir) {
                let lower = base.to_ascii_lowercase();
                let yaml = lower.ends_with(".yaml") || lower.ends_with(".yml");
                if !(yaml || lower.ends_with(".json")) {
                    continue;
                }
                let parsed = parse_file(entry, yaml);
                changes.nodes.push((path, Node::Catalog(parsed)));
            } else if base.ends_with(".db") {
                changes.nodes.push((path, Node::Sqlite));
            }
        }
        self.apply(changes);
        Ok(())
    }

    fn apply(&mut self, changes: LayerChanges) {
        for dir in &changes.opaque {
            self.nodes
                .retain(|k, _| !(stream::is_under(k, dir) && k != dir));
        }
        for gone in changes.whiteouts.iter().chain(&changes.replaced) {
            self.nodes.retain(|k, _| !stream::is_under(k, gone));
        }
        self.nodes.extend(changes.nodes);
    }

    /// The catalog. Fails on the first unparsable surviving file; with no catalog file, names
    /// the SQLite database if there is one.
    pub fn finish(self) -> Result<Catalog, SourceError> {
        let mut catalog = Catalog::default();
        let mut sqlite = None;
        let mut files = 0;
        let mut channel_files: HashMap<(String, String), String> = HashMap::new();
        let mut bundle_files: HashMap<(String, String), String> = HashMap::new();
        for (path, node) in self.nodes {
            let data = match node {
                Node::Sqlite => {
                    if sqlite.is_none() || path == "database/index.db" {
                        sqlite = Some(path);
                    }
                    continue;
                }
                Node::Catalog(Err(reason)) => {
                    return Err(SourceError::CatalogFile {
                        file: format!("/{path}"),
                        reason,
                    });
                }
                Node::Catalog(Ok(data)) => data,
            };
            files += 1;
            let dup = |what: String, first: &str| SourceError::CatalogFile {
                file: format!("/{path}"),
                reason: format!("{what} is defined twice (also in /{first})"),
            };
            for p in data.packages {
                let pkg = catalog.packages.entry(p.name.clone()).or_default();
                if p.default_channel.is_some() {
                    pkg.default_channel = p.default_channel;
                }
            }
            for c in data.channels {
                let key = (c.package.clone(), c.name.clone());
                if let Some(first) = channel_files.get(&key) {
                    return Err(dup(
                        format!("olm.channel {:?} of package {:?}", c.name, c.package),
                        first,
                    ));
                }
                channel_files.insert(key, path.clone());
                catalog
                    .packages
                    .entry(c.package)
                    .or_default()
                    .channels
                    .insert(c.name, c.entries);
            }
            for b in data.bundles {
                let key = (b.package.clone(), b.name.clone());
                if let Some(first) = bundle_files.get(&key) {
                    return Err(dup(
                        format!("olm.bundle {:?} of package {:?}", b.name, b.package),
                        first,
                    ));
                }
                bundle_files.insert(key.clone(), path.clone());
                catalog.bundles.insert(key, b);
            }
        }
        if files == 0 {
            let configs_dir = format!("/{}", self.configs_dir);
            return Err(match sqlite {
                Some(path) => SourceError::SqliteIndex {
                    path: format!("/{path}"),
                    configs_dir,
                },
                None => SourceError::NoCatalog { configs_dir },
            });
        }
        Ok(catalog)
    }
}

#[derive(Debug, Default)]
struct Package {
    default_channel: Option<String>,
    channels: BTreeMap<String, Vec<ChannelEntry>>,
}

/// A parsed file-based catalog: packages, their channels, and the bundles' images.
#[derive(Debug, Default)]
pub struct Catalog {
    packages: BTreeMap<String, Package>,
    bundles: HashMap<(String, String), BundleMeta>,
}

impl Catalog {
    /// The images to pre-cache for `package:channel`: the `relatedImages[].image` of the
    /// channel head's bundle, deduplicated and sorted. As in TALM's `parse_index.py`, the
    /// bundle image itself is not added unless the catalog lists it among the related images
    /// (`opm render` normally does). An empty `channel` means the package's `defaultChannel`.
    ///
    /// The channel head is the entry that no other entry of the channel `replaces` or `skips`
    /// (the rule `opm` validates catalogs with). `skipRange` does not take part: it is a
    /// semver range evaluated by OLM at upgrade time against installed versions, it names no
    /// entry, and `opm` ignores it when finding the head, so a bundle inside another entry's
    /// skipRange can still be the head. TALM falls back to the last entry when it finds no
    /// single head; here no head (a cycle) or several heads is an error naming them, since
    /// `opm` would reject such a catalog.
    pub fn related_images(&self, package: &str, channel: &str) -> Result<Vec<String>, SourceError> {
        let lookup = |reason: String| SourceError::CatalogLookup {
            package: package.to_string(),
            channel: channel.to_string(),
            reason,
        };
        let Some(pkg) = self.packages.get(package) else {
            return Err(lookup(format!(
                "package {package:?} is not in the catalog ({} packages)",
                self.packages.len()
            )));
        };
        let channel_name = if channel.is_empty() {
            pkg.default_channel.as_deref().ok_or_else(|| {
                lookup("no channel given and the package has no defaultChannel".into())
            })?
        } else {
            channel
        };
        let Some(entries) = pkg.channels.get(channel_name) else {
            let known: Vec<&str> = pkg.channels.keys().map(String::as_str).collect();
            return Err(lookup(format!(
                "package {package:?} has no channel {channel_name:?} (channels: {})",
                known.join(", ")
            )));
        };
        let head =
            channel_head(entries).map_err(|r| lookup(format!("channel {channel_name:?}: {r}")))?;
        let Some(bundle) = self.bundles.get(&(package.to_string(), head.to_string())) else {
            return Err(lookup(format!(
                "channel {channel_name:?} head {head:?} has no olm.bundle in the catalog"
            )));
        };
        let images: BTreeSet<String> = bundle.related_images.iter().cloned().collect();
        Ok(images.into_iter().collect())
    }

    /// The image of the channel head's bundle (for logs and callers that want it too).
    pub fn head_bundle(
        &self,
        package: &str,
        channel: &str,
    ) -> Result<(String, String), SourceError> {
        let lookup = |reason: String| SourceError::CatalogLookup {
            package: package.to_string(),
            channel: channel.to_string(),
            reason,
        };
        let pkg = self
            .packages
            .get(package)
            .ok_or_else(|| lookup("package not in the catalog".into()))?;
        let channel_name = if channel.is_empty() {
            pkg.default_channel.as_deref().unwrap_or_default()
        } else {
            channel
        };
        let entries = pkg
            .channels
            .get(channel_name)
            .ok_or_else(|| lookup("no such channel".into()))?;
        let head = channel_head(entries).map_err(lookup)?;
        let image = self
            .bundles
            .get(&(package.to_string(), head.to_string()))
            .map(|b| b.image.clone())
            .unwrap_or_default();
        Ok((head.to_string(), image))
    }

    /// The package names, sorted.
    pub fn packages(&self) -> Vec<String> {
        self.packages.keys().cloned().collect()
    }

    /// The channel names of a package, sorted (empty for an unknown package).
    pub fn channels(&self, package: &str) -> Vec<String> {
        self.packages
            .get(package)
            .map(|p| p.channels.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// The single entry no other entry replaces or skips.
fn channel_head(entries: &[ChannelEntry]) -> Result<&str, String> {
    if entries.is_empty() {
        return Err("the channel has no entries".into());
    }
    let mut incoming: BTreeSet<&str> = BTreeSet::new();
    for e in entries {
        if let Some(r) = e
            .replaces
            .as_deref()
            .filter(|r| !r.is_empty() && *r != e.name)
        {
            incoming.insert(r);
        }
        incoming.extend(e.skips.iter().map(String::as_str).filter(|s| *s != e.name));
    }
    let heads: BTreeSet<&str> = entries
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| !incoming.contains(n))
        .collect();
    match heads.len() {
        1 => Ok(heads.into_iter().next().unwrap_or_default()),
        0 => Err("no channel head: every entry is replaced or skipped by another (a cycle)".into()),
        _ => Err(format!(
            "several channel heads ({}): no entry replaces or skips the others",
            heads.into_iter().collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Parses an `operatorsPackagesAndChannels` entry, `package:channel`. Whitespace is removed,
/// as TALM's `olm.sh` does. `package:` (no channel) selects the package's default channel.
pub fn parse_package_channel(entry: &str) -> Result<(String, String), SourceError> {
    let bad = |reason: &str| SourceError::PackageChannel {
        entry: entry.to_string(),
        reason: reason.to_string(),
    };
    let compact: String = entry.chars().filter(|c| !c.is_whitespace()).collect();
    let Some((package, channel)) = compact.split_once(':') else {
        return Err(bad("expected package:channel"));
    };
    if package.is_empty() {
        return Err(bad("empty package name"));
    }
    if channel.contains(':') {
        return Err(bad("more than one ':'"));
    }
    Ok((package.to_string(), channel.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::stream::testutil::Layer;
    use super::*;
    use serde_json::json;

    fn bundle(package: &str, name: &str, related: &[&str]) -> Value {
        // A realistic bundle: large properties (the CSV embedded as an olm.bundle.object) that
        // the parser must skip.
        let csv = "x".repeat(50_000);
        json!({
            "schema": "olm.bundle",
            "name": name,
            "package": package,
            "image": format!("quay.io/bundles/{name}:bundle"),
            "properties": [
                {"type": "olm.package", "value": {"packageName": package, "version": "1.0.0"}},
                {"type": "olm.gvk", "value": {"group": "etcd.database.coreos.com", "kind": "EtcdCluster", "version": "v1beta2"}},
                {"type": "olm.bundle.object", "value": {"data": csv}}
            ],
            "relatedImages": related.iter().map(|i| json!({"name": "img", "image": i})).collect::<Vec<_>>(),
        })
    }

    /// `configs/etcd/catalog.json`: several objects concatenated in one JSON stream.
    fn etcd_json() -> Vec<u8> {
        let objects = vec![
            json!({"schema": "olm.package", "name": "etcd", "defaultChannel": "stable", "icon": {"base64data": "iVBOR", "mediatype": "image/png"}}),
            json!({"schema": "olm.channel", "package": "etcd", "name": "alpha", "entries": [
                {"name": "etcdoperator.v0.6.1"},
                {"name": "etcdoperator.v0.9.0", "replaces": "etcdoperator.v0.6.1", "skipRange": ">=0.6.0 <0.9.0"}
            ]}),
            json!({"schema": "olm.channel", "package": "etcd", "name": "stable", "entries": [
                {"name": "etcdoperator.v0.9.0"},
                {"name": "etcdoperator.v0.9.2", "replaces": "etcdoperator.v0.9.0"},
                {"name": "etcdoperator.v0.9.3"},
                {"name": "etcdoperator.v0.9.4", "replaces": "etcdoperator.v0.9.2", "skips": ["etcdoperator.v0.9.3"]}
            ]}),
            json!({"schema": "olm.deprecations", "package": "etcd", "entries": [
                {"reference": {"schema": "olm.channel", "name": "alpha"}, "message": "alpha is deprecated"}
            ]}),
            bundle(
                "etcd",
                "etcdoperator.v0.6.1",
                &[
                    "quay.io/coreos/etcd-operator@sha256:61",
                    "quay.io/bundles/etcdoperator.v0.6.1:bundle",
                ],
            ),
            bundle(
                "etcd",
                "etcdoperator.v0.9.0",
                &[
                    "quay.io/coreos/etcd-operator@sha256:90",
                    "quay.io/bundles/etcdoperator.v0.9.0:bundle",
                ],
            ),
            bundle(
                "etcd",
                "etcdoperator.v0.9.2",
                &["quay.io/coreos/etcd-operator@sha256:92"],
            ),
            bundle(
                "etcd",
                "etcdoperator.v0.9.3",
                &["quay.io/coreos/etcd-operator@sha256:93"],
            ),
            bundle(
                "etcd",
                "etcdoperator.v0.9.4",
                &[
                    "quay.io/coreos/etcd-operator@sha256:94",
                    "quay.io/bundles/etcdoperator.v0.9.4:bundle",
                    "quay.io/coreos/etcd@sha256:3",
                    "quay.io/coreos/etcd-operator@sha256:94",
                ],
            ),
        ];
        let mut out = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            // Mixed layouts: pretty, compact, no separator at all.
            if i % 2 == 0 {
                out.extend(serde_json::to_vec_pretty(o).unwrap());
                out.push(b'\n');
            } else {
                out.extend(serde_json::to_vec(o).unwrap());
            }
        }
        out
    }

    const SRIOV_YAML: &str = r#"---
schema: olm.package
name: sriov-network-operator
defaultChannel: stable
description: |
  SR-IOV network operator
---
schema: olm.channel
package: sriov-network-operator
name: stable
entries:
  - name: sriov-network-operator.v4.16.0
  - name: sriov-network-operator.v4.16.1
    replaces: sriov-network-operator.v4.16.0
    skipRange: ">=4.15.0 <4.16.1"
---
schema: olm.bundle
name: sriov-network-operator.v4.16.0
package: sriov-network-operator
image: registry.redhat.io/openshift4/sriov-bundle@sha256:160
relatedImages:
  - name: operator
    image: registry.redhat.io/openshift4/sriov-operator@sha256:160
---
schema: olm.bundle
name: sriov-network-operator.v4.16.1
package: sriov-network-operator
image: registry.redhat.io/openshift4/sriov-bundle@sha256:161
properties:
  - type: olm.package
    value: {packageName: sriov-network-operator, version: 4.16.1}
relatedImages:
  - name: operator
    image: registry.redhat.io/openshift4/sriov-operator@sha256:161
  - name: config-daemon
    image: registry.redhat.io/openshift4/sriov-config-daemon@sha256:161
  - name: bundle
    image: registry.redhat.io/openshift4/sriov-bundle@sha256:161
  - name: webhook
    image: registry.redhat.io/openshift4/sriov-webhook@sha256:161
  - name: config-daemon-again
    image: registry.redhat.io/openshift4/sriov-config-daemon@sha256:161
---
"#;

    fn build(layers: &[Vec<u8>], configs: &str) -> Result<Catalog, SourceError> {
        let mut b = CatalogBuilder::new(configs);
        for l in layers {
            b.add_layer(&l[..])?;
        }
        b.finish()
    }

    fn two_package_index() -> Vec<Vec<u8>> {
        let base = Layer::new()
            .dir("bin/")
            .file("bin/opm", b"\x7fELF opm")
            .dir("configs/")
            .file("configs/.indexignore", b"*.md\n")
            .file("configs/README.md", b"# not a catalog")
            .file("configs/etcd/catalog.json", &etcd_json())
            .file(
                "configs/stale/catalog.json",
                br#"{"schema":"olm.package","name":"stale"}"#,
            )
            .file("configs/broken/catalog.json", b"{ this is not json")
            .file(
                "etc/catalog.json",
                br#"{"schema":"olm.package","name":"outside-configs"}"#,
            )
            .tar();
        let top = Layer::new()
            .file("configs/.wh.stale", b"")
            .file("configs/broken/.wh.catalog.json", b"")
            .file(
                "./configs/sriov-network-operator/catalog.yaml",
                SRIOV_YAML.as_bytes(),
            )
            .gzip();
        vec![base, top]
    }

    #[test]
    fn reads_a_two_package_catalog_across_layers() {
        let catalog = build(&two_package_index(), DEFAULT_CONFIGS_DIR).unwrap();
        assert_eq!(
            catalog.packages(),
            ["etcd", "sriov-network-operator"],
            "stale and broken are whited out"
        );
        assert_eq!(catalog.channels("etcd"), ["alpha", "stable"]);

        // stable: v0.9.4 replaces v0.9.2 (replaces v0.9.0) and skips v0.9.3.
        assert_eq!(
            catalog.related_images("etcd", "stable").unwrap(),
            [
                "quay.io/bundles/etcdoperator.v0.9.4:bundle",
                "quay.io/coreos/etcd-operator@sha256:94",
                "quay.io/coreos/etcd@sha256:3",
            ],
            "head's related images, deduplicated and sorted"
        );
        assert_eq!(
            catalog.head_bundle("etcd", "stable").unwrap(),
            (
                "etcdoperator.v0.9.4".into(),
                "quay.io/bundles/etcdoperator.v0.9.4:bundle".into()
            )
        );
        assert_eq!(
            catalog.related_images("etcd", "alpha").unwrap(),
            [
                "quay.io/bundles/etcdoperator.v0.9.0:bundle",
                "quay.io/coreos/etcd-operator@sha256:90"
            ]
        );
        // Empty channel = defaultChannel.
        assert_eq!(
            catalog.related_images("etcd", "").unwrap(),
            catalog.related_images("etcd", "stable").unwrap()
        );

        // The YAML file: v4.16.1 replaces v4.16.0; only relatedImages (the bundle image is
        // there because the catalog lists it).
        assert_eq!(
            catalog
                .related_images("sriov-network-operator", "stable")
                .unwrap(),
            [
                "registry.redhat.io/openshift4/sriov-bundle@sha256:161",
                "registry.redhat.io/openshift4/sriov-config-daemon@sha256:161",
                "registry.redhat.io/openshift4/sriov-operator@sha256:161",
                "registry.redhat.io/openshift4/sriov-webhook@sha256:161",
            ]
        );
    }

    #[test]
    fn the_bundle_image_is_not_added_when_related_images_lack_it() {
        let catalog = build(&two_package_index(), "/configs").unwrap();
        // etcd v0.9.2 lists only the operator image.
        let json = [
            json!({"schema": "olm.package", "name": "p"}),
            json!({"schema": "olm.channel", "package": "p", "name": "c", "entries": [{"name": "p.v1"}]}),
            bundle("p", "p.v1", &["quay.io/p/operator@sha256:1"]),
        ]
        .iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join("\n");
        let c = build(
            &[Layer::new()
                .file("configs/p/index.json", json.as_bytes())
                .tar()],
            "/configs",
        )
        .unwrap();
        assert_eq!(
            c.related_images("p", "c").unwrap(),
            ["quay.io/p/operator@sha256:1"]
        );
        assert_eq!(catalog.packages().len(), 2);
    }

    #[test]
    fn opaque_directories_hide_lower_layers_only() {
        let pkg = |name: &str| {
            format!(
                r#"{{"schema":"olm.package","name":"{name}"}}{{"schema":"olm.channel","package":"{name}","name":"c","entries":[{{"name":"{name}.v1"}}]}}{}"#,
                bundle(name, &format!("{name}.v1"), &[&format!("quay.io/{name}:1")])
            )
        };
        let lower = Layer::new()
            .file("configs/a/catalog.json", pkg("a").as_bytes())
            .file("configs/b/catalog.json", pkg("b").as_bytes())
            .tar();
        // The new file comes *before* the opaque marker in the stream: it must survive.
        let upper = Layer::new()
            .file("configs/c/catalog.json", pkg("c").as_bytes())
            .file("configs/.wh..wh..opq", b"")
            .gzip();
        let catalog = build(&[lower.clone(), upper], "/configs").unwrap();
        assert_eq!(catalog.packages(), ["c"]);
        assert_eq!(catalog.related_images("c", "c").unwrap(), ["quay.io/c:1"]);

        // An opaque marker on a subdirectory hides that directory only.
        let upper = Layer::new().file("configs/a/.wh..wh..opq", b"").gzip();
        assert_eq!(
            build(&[lower.clone(), upper], "/configs")
                .unwrap()
                .packages(),
            ["b"]
        );

        // A file replacing a lower directory hides the directory's contents.
        let upper = Layer::new().symlink("configs/b", "/elsewhere").tar();
        assert_eq!(
            build(&[lower, upper], "/configs").unwrap().packages(),
            ["a"]
        );
    }

    #[test]
    fn honours_the_configs_label_and_ignores_other_directories() {
        let layers = two_package_index();
        let moved = Layer::new()
            .file("catalog/etcd/catalog.json", &etcd_json())
            .tar();
        let catalog = build(&[layers[0].clone(), moved], "/catalog/").unwrap();
        assert_eq!(catalog.packages(), ["etcd"]);
    }

    #[test]
    fn sqlite_only_index_is_reported_clearly() {
        let layer = Layer::new()
            .dir("database/")
            .file("database/index.db", b"SQLite format 3\0")
            .file("bin/opm", b"x")
            .gzip();
        let err = build(&[layer], DEFAULT_CONFIGS_DIR).unwrap_err();
        assert!(
            matches!(&err, SourceError::SqliteIndex { path, .. } if path == "/database/index.db"),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(
                "SQLite-based index images are not supported; rebuild it as a file-based catalog"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("/database/index.db") && msg.contains("/configs"),
            "{msg}"
        );

        // Any *.db under /database counts.
        let layer = Layer::new()
            .file("database/other.db", b"SQLite format 3\0")
            .tar();
        let err = build(&[layer], DEFAULT_CONFIGS_DIR).unwrap_err();
        assert!(
            matches!(&err, SourceError::SqliteIndex { path, .. } if path == "/database/other.db"),
            "{err:?}"
        );

        // Both: the file-based catalog is used.
        let mut layers = two_package_index();
        layers.push(
            Layer::new()
                .file("database/index.db", b"SQLite format 3\0")
                .tar(),
        );
        assert_eq!(
            build(&layers, DEFAULT_CONFIGS_DIR)
                .unwrap()
                .packages()
                .len(),
            2
        );

        // A whited-out database and no configs: nothing at all.
        let lower = Layer::new().file("database/index.db", b"x").tar();
        let upper = Layer::new().file("database/.wh.index.db", b"").tar();
        let err = build(&[lower, upper], DEFAULT_CONFIGS_DIR).unwrap_err();
        assert!(matches!(err, SourceError::NoCatalog { .. }), "{err:?}");
    }

    /// Issue 14 item 5: a catalog's YAML is read with the shared alias-expansion budget.
    #[test]
    fn yaml_alias_bombs_are_refused() {
        let big = "x".repeat(256 * 1024);
        let mut text = format!("schema: olm.package\nname: a\ndescription: &s {big}\nicon:\n");
        for _ in 0..99 {
            text.push_str("- *s\n");
        }
        let err = parse_file(text.as_bytes(), true).map(|_| ()).unwrap_err();
        assert!(err.contains("aliases expand the document beyond"), "{err}");
    }

    #[test]
    fn no_catalog_at_all() {
        let err = build(
            &[Layer::new()
                .file("configs/README.md", b"hi")
                .file("usr/bin/x", b"x")
                .tar()],
            "/configs",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("no file-based catalog under /configs"),
            "{msg}"
        );
        let err = build(&[], "/configs").unwrap_err();
        assert!(matches!(err, SourceError::NoCatalog { .. }));
    }

    #[test]
    fn lookup_errors_name_what_is_missing() {
        let catalog = build(&two_package_index(), "/configs").unwrap();
        let e = catalog
            .related_images("nope", "stable")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("operator nope:stable")
                && e.contains("package \"nope\" is not in the catalog"),
            "{e}"
        );
        let e = catalog
            .related_images("etcd", "fast")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("operator etcd:fast")
                && e.contains("no channel \"fast\" (channels: alpha, stable)"),
            "{e}"
        );
        assert!(catalog.related_images("sriov-network-operator", "").is_ok());
    }

    fn single(objects: &[Value]) -> Result<Catalog, SourceError> {
        let text = objects
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        build(
            &[Layer::new()
                .file("configs/p/catalog.json", text.as_bytes())
                .tar()],
            "/configs",
        )
    }

    #[test]
    fn channel_head_errors() {
        let pkg = json!({"schema": "olm.package", "name": "p"});
        // Two heads: nobody replaces v1 or v2.
        let c = single(&[
            pkg.clone(),
            json!({"schema": "olm.channel", "package": "p", "name": "c", "entries": [{"name": "p.v1"}, {"name": "p.v2"}]}),
            bundle("p", "p.v1", &[]),
            bundle("p", "p.v2", &[]),
        ])
        .unwrap();
        let e = c.related_images("p", "c").unwrap_err().to_string();
        assert!(e.contains("several channel heads (p.v1, p.v2)"), "{e}");
        // skipRange does not make an entry a non-head.
        let c = single(&[
            pkg.clone(),
            json!({"schema": "olm.channel", "package": "p", "name": "c", "entries": [{"name": "p.v1"}, {"name": "p.v2", "skipRange": "<2.0.0"}]}),
        ])
        .unwrap();
        assert!(
            c.related_images("p", "c")
                .unwrap_err()
                .to_string()
                .contains("several channel heads")
        );
        // A cycle.
        let c = single(&[
            pkg.clone(),
            json!({"schema": "olm.channel", "package": "p", "name": "c", "entries": [
                {"name": "p.v1", "replaces": "p.v2"}, {"name": "p.v2", "replaces": "p.v1"}]}),
        ])
        .unwrap();
        assert!(
            c.related_images("p", "c")
                .unwrap_err()
                .to_string()
                .contains("no channel head")
        );
        // The head's bundle is missing.
        let c = single(&[
            pkg.clone(),
            json!({"schema": "olm.channel", "package": "p", "name": "c", "entries": [{"name": "p.v1"}, {"name": "p.v2", "replaces": "p.v1"}]}),
            bundle("p", "p.v1", &["x.io/a:1"]),
        ])
        .unwrap();
        let e = c.related_images("p", "c").unwrap_err().to_string();
        assert!(e.contains("head \"p.v2\" has no olm.bundle"), "{e}");
        // Empty channel without a default channel.
        let e = c.related_images("p", "").unwrap_err().to_string();
        assert!(e.contains("no defaultChannel"), "{e}");
        // Replacing an entry outside the channel is fine (the head is still unique).
        let c = single(&[
            pkg,
            json!({"schema": "olm.channel", "package": "p", "name": "c", "entries": [{"name": "p.v3", "replaces": "p.v0", "skips": ["p.vx"]}]}),
            bundle("p", "p.v3", &["x.io/a:3"]),
        ])
        .unwrap();
        assert_eq!(c.related_images("p", "c").unwrap(), ["x.io/a:3"]);
    }

    #[test]
    fn malformed_catalog_files_name_the_file_and_object() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"{\"schema\":\"olm.package\",\"name\":\"p\"} {oops".to_vec(),
                "invalid JSON in object #2",
            ),
            (br#"{"name":"p"}"#.to_vec(), "object #1 has no `schema`"),
            (
                br#"{"schema":"olm.channel","name":"c","package":"p","entries":{"name":"x"}}"#
                    .to_vec(),
                "olm.channel \"c\" (object #1): bad `entries`",
            ),
            (
                br#"{"schema":"olm.channel","name":"c","entries":[]}"#.to_vec(),
                "olm.channel \"c\" (object #1) has no `package`",
            ),
            (
                br#"{"schema":"olm.bundle","name":"b","package":"p","relatedImages":"x"}"#.to_vec(),
                "olm.bundle \"b\" (object #1): bad `relatedImages`",
            ),
            (
                br#"{"schema":"olm.bundle","name":7,"package":"p"}"#.to_vec(),
                "`name` is not a string",
            ),
        ];
        for (text, needle) in cases {
            let e = build(
                &[Layer::new().file("configs/p/catalog.json", &text).tar()],
                "/configs",
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.starts_with("catalog file /configs/p/catalog.json: "),
                "{e}"
            );
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
        let e = build(
            &[Layer::new()
                .file("configs/p/catalog.yaml", b"schema: [unclosed\n")
                .tar()],
            "/configs",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/configs/p/catalog.yaml") && e.contains("invalid YAML"),
            "{e}"
        );
        // Duplicate channels across files.
        let ch =
            br#"{"schema":"olm.channel","name":"c","package":"p","entries":[{"name":"p.v1"}]}"#;
        let e = build(
            &[Layer::new()
                .file("configs/a.json", ch)
                .file("configs/b.json", ch)
                .tar()],
            "/configs",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/configs/b.json") && e.contains("defined twice (also in /configs/a.json)"),
            "{e}"
        );
        // A corrupt layer.
        let mut gz = two_package_index()[1].clone();
        gz.truncate(gz.len() / 2);
        let e = CatalogBuilder::new("/configs")
            .add_layer(&gz[..])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("index layer 1: "), "{e}");
    }

    #[test]
    fn package_channel_entries() {
        assert_eq!(
            parse_package_channel("sriov-network-operator:stable").unwrap(),
            ("sriov-network-operator".into(), "stable".into())
        );
        assert_eq!(
            parse_package_channel(" ptp-operator : stable ").unwrap(),
            ("ptp-operator".into(), "stable".into())
        );
        assert_eq!(
            parse_package_channel("local-storage-operator:").unwrap(),
            ("local-storage-operator".into(), String::new())
        );
        for (entry, needle) in [
            ("nochannel", "expected package:channel"),
            (":stable", "empty package"),
            ("a:b:c", "more than one"),
        ] {
            let e = parse_package_channel(entry).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{entry:?}")) && e.contains(needle),
                "{e}"
            );
        }
    }
}
