//! The image list of a pre-cache spec, as TALM's `release.sh`, `olm.sh` and `pull.sh` build it:
//!
//! 1. the release image itself (TALM pulls it to mount it, so it ends up in containers-storage),
//!    then its payload: `release-manifests/image-references` read from the release image's
//!    layers in the cache (top layer first, stopping at the first hit, streamed through the
//!    decompressor: nothing is unpacked), minus the entries whose tag name or pull spec matches
//!    an exclude pattern;
//! 2. each operators index image (TALM pulls it too), then for each `package:channel` the channel
//!    head's `relatedImages`, from the index's file-based catalog (its configs directory comes
//!    from the `operators.operatorframework.io.index.configs.v1` label, `/configs` by default; a
//!    SQLite-only index is refused with a clear error);
//! 3. `additionalImages`.
//!
//! Duplicates are dropped (the first occurrence keeps its place).

use std::collections::HashSet;

use serde::Deserialize;
use talm_shared::api::cgu::PrecachingSpec;

use super::PrecacheError;
use super::cache::Digest;
use super::pull::{PullError, Puller, Resolved};
use super::sources::{
    CatalogBuilder, ExcludePatterns, filter_release, image_references_from_layer,
    parse_package_channel,
};

/// Where an image of the list comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The release image.
    Release,
    /// A payload image of the release.
    Payload,
    /// An operators index image.
    Index,
    /// An operator's related image.
    Operator,
    /// `additionalImages`.
    Additional,
}

/// The image list.
#[derive(Clone, Debug, Default)]
pub struct ImageList {
    /// The images, deduplicated, in pull order.
    pub images: Vec<(String, Origin)>,
    /// Payload entries left out by an exclude pattern (`name`, `pull spec`).
    pub excluded: Vec<(String, String)>,
}

impl ImageList {
    fn push(&mut self, seen: &mut HashSet<String>, image: &str, origin: Origin) {
        let image = image.trim();
        if !image.is_empty() && seen.insert(image.to_string()) {
            self.images.push((image.to_string(), origin));
        }
    }

    /// The pull specs.
    pub fn names(&self) -> Vec<String> {
        self.images.iter().map(|(n, _)| n.clone()).collect()
    }
}

#[derive(Debug, Default, Deserialize)]
struct ImageConfig {
    #[serde(default)]
    config: Option<ConfigSection>,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigSection {
    #[serde(default, rename = "Labels")]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

/// Builds the image list, pulling the release and index images into the cache to read them.
pub async fn build(spec: &PrecachingSpec, puller: &Puller) -> Result<ImageList, PrecacheError> {
    let mut list = ImageList::default();
    let mut seen = HashSet::new();
    let exclude = ExcludePatterns::new(&spec.exclude_precache_patterns)?;
    let release = spec.platform_image.trim();
    if !release.is_empty() {
        list.push(&mut seen, release, Origin::Release);
        let r = fetch(puller, release).await?;
        let refs = release_refs(puller, &r).await?;
        let total = refs.len();
        let kept = filter_release(refs.clone(), &exclude);
        let kept_specs: HashSet<&str> = kept.iter().map(|k| k.pull_spec.as_str()).collect();
        for e in &refs {
            if !kept_specs.contains(e.pull_spec.as_str()) {
                list.excluded.push((e.name.clone(), e.pull_spec.clone()));
            }
        }
        tracing::info!(
            release,
            payload = total,
            excluded = total - kept.len(),
            "release image references"
        );
        for k in &kept {
            list.push(&mut seen, &k.pull_spec, Origin::Payload);
        }
    }
    let indexes: Vec<&str> = {
        let mut s = HashSet::new();
        spec.operators_indexes
            .iter()
            .map(|i| i.trim())
            .filter(|i| !i.is_empty() && s.insert(*i))
            .collect()
    };
    let mut packages = Vec::new();
    for entry in &spec.operators_packages_and_channels {
        if entry.trim().is_empty() {
            continue;
        }
        packages.push(parse_package_channel(entry)?);
    }
    if !indexes.is_empty() && packages.is_empty() {
        return Err(PrecacheError::Spec(
            "olm index provided, but no packages (operatorsPackagesAndChannels is empty)".into(),
        ));
    }
    if indexes.is_empty() && !packages.is_empty() {
        tracing::warn!(
            "operatorsPackagesAndChannels is set but there is no operators index: ignored (as TALM)"
        );
    }
    let mut catalogs = Vec::new();
    for index in &indexes {
        list.push(&mut seen, index, Origin::Index);
        let r = fetch(puller, index).await?;
        catalogs.push((index.to_string(), catalog(puller, &r).await?));
    }
    for (pkg, channel) in &packages {
        let mut found = false;
        for (index, cat) in &catalogs {
            if !cat.packages().iter().any(|p| p == pkg) {
                continue;
            }
            found = true;
            let images = cat
                .related_images(pkg, channel)
                .map_err(|e| PrecacheError::Spec(format!("operators index {index}: {e}")))?;
            for img in images {
                list.push(&mut seen, &img, Origin::Operator);
            }
        }
        if !found && !catalogs.is_empty() {
            return Err(PrecacheError::Spec(format!(
                "operator package {pkg:?} ({pkg}:{channel}) is in none of the operators indexes ({})",
                indexes.join(", ")
            )));
        }
    }
    for img in &spec.additional_images {
        list.push(&mut seen, img, Origin::Additional);
    }
    Ok(list)
}

async fn fetch(puller: &Puller, image: &str) -> Result<Resolved, PullError> {
    let r = puller.resolve(image).await?;
    puller.fetch_all(&r).await?;
    Ok(r)
}

async fn release_refs(
    puller: &Puller,
    r: &Resolved,
) -> Result<Vec<super::sources::ImageReference>, PrecacheError> {
    // Top layer first: a higher layer's copy of the file wins.
    for layer in r.layers.iter().rev() {
        let d = Digest::parse(&layer.digest)?;
        let file = puller.cache().open_blob(&d)?;
        let found = tokio::task::spawn_blocking(move || {
            image_references_from_layer(std::io::BufReader::new(file))
        })
        .await
        .map_err(|e| PrecacheError::Spec(format!("reading the release layers: {e}")))??;
        if let Some(refs) = found {
            return Ok(refs);
        }
    }
    Err(PrecacheError::Spec(format!(
        "release image {}: no layer holds release-manifests/image-references (is it an OpenShift release image?)",
        r.name
    )))
}

async fn catalog(puller: &Puller, r: &Resolved) -> Result<super::sources::Catalog, PrecacheError> {
    let cache = puller.cache();
    let config = r
        .blobs
        .first()
        .map(|c| Digest::parse(&c.digest))
        .transpose()?;
    let configs_dir = match config {
        Some(d) => {
            let bytes = cache.read_blob(&d)?;
            let cfg: ImageConfig = serde_json::from_slice(&bytes).unwrap_or_default();
            cfg.config
                .and_then(|c| c.labels)
                .and_then(|l| l.get(super::sources::catalog::CONFIGS_LABEL).cloned())
                .unwrap_or_else(|| super::sources::catalog::DEFAULT_CONFIGS_DIR.to_string())
        }
        None => super::sources::catalog::DEFAULT_CONFIGS_DIR.to_string(),
    };
    let mut files = Vec::new();
    for layer in &r.layers {
        let d = Digest::parse(&layer.digest)?;
        files.push(cache.open_blob(&d)?);
    }
    let name = r.name.clone();
    tokio::task::spawn_blocking(move || {
        let mut b = CatalogBuilder::new(&configs_dir);
        for f in files {
            b.add_layer(std::io::BufReader::new(f))?;
        }
        b.finish()
    })
    .await
    .map_err(|e| PrecacheError::Spec(format!("reading index {name}: {e}")))?
    .map_err(|e| PrecacheError::Index {
        image: r.name.clone(),
        source: e,
    })
}
