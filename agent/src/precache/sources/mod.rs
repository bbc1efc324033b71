//! The image list of a pre-cache spec, and the node configuration that decides where images are
//! pulled from. Pure parsing: callers hand in readers, bytes or file paths.
//!
//! - [`reference`]: pull-spec parsing with docker.io defaults ([`ImageRef`]).
//! - [`exclude`]: `excludePrecachePatterns`, with TALM's `grep -G` (POSIX basic regular
//!   expression) semantics.
//! - [`release`]: `release-manifests/image-references` of a release image, read from a layer
//!   stream.
//! - [`catalog`]: file-based operator catalogs (FBC) read from an index image's layers, channel
//!   heads and their `relatedImages`.
//! - [`mirrors`]: `registries.conf` (v2, plus drop-ins): mirrors, blocked and insecure registries.
//! - [`auth`]: the node's pull secret (kubelet `config.json`).
//!
//! Every [`SourceError`] names the file, image, pattern or field at fault.

pub mod auth;
pub mod catalog;
pub mod exclude;
pub mod mirrors;
pub mod reference;
pub mod release;
mod stream;

pub use auth::PullSecret;
pub use catalog::{Catalog, CatalogBuilder, parse_package_channel};
pub use exclude::ExcludePatterns;
pub use mirrors::{Candidate, Mirrors};
pub use reference::ImageRef;
pub use release::{
    ImageReference, filter_release, image_references_from_layer, parse_image_references,
};

use std::path::PathBuf;

/// Everything that can be wrong with the image list or the node's registry configuration.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A pull spec that is not a valid image reference.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `excludePrecachePatterns` entry that is not a valid regular expression.
    #[error("invalid exclude pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `release-manifests/image-references` is not the ImageStream TALM reads.
    #[error("release-manifests/image-references: {reason}")]
    ImageReferences {
        /// What is wrong (JSON position or the entry at fault).
        reason: String,
    },
    /// A layer stream that could not be read (decompression or tar framing).
    #[error("{what}: {source}")]
    Layer {
        /// Which stream and where in it.
        what: String,
        /// The I/O, gzip, zstd or tar error.
        #[source]
        source: std::io::Error,
    },
    /// A file of the file-based catalog that is not valid FBC.
    #[error("catalog file {file}: {reason}")]
    CatalogFile {
        /// The file inside the index image (e.g. `configs/etcd/catalog.json`).
        file: String,
        /// What is wrong (position, object, field).
        reason: String,
    },
    /// The index image holds only a SQLite database.
    #[error(
        "index image holds a SQLite database ({path}) and no file-based catalog under {configs_dir}: \
         SQLite-based index images are not supported; rebuild it as a file-based catalog \
         (opm migrate, or opm render into a /configs directory)"
    )]
    SqliteIndex {
        /// The database file found (e.g. `/database/index.db`).
        path: String,
        /// The configs directory that was searched.
        configs_dir: String,
    },
    /// The index image holds neither a file-based catalog nor a SQLite database.
    #[error(
        "index image holds no file-based catalog under {configs_dir} (no .json/.yaml/.yml files) \
         and no SQLite database: is it an operator index image?"
    )]
    NoCatalog {
        /// The configs directory that was searched.
        configs_dir: String,
    },
    /// A `package:channel` lookup that the catalog cannot answer.
    #[error("operator {package}:{channel}: {reason}")]
    CatalogLookup {
        /// The package asked for.
        package: String,
        /// The channel asked for (empty: the package's default channel).
        channel: String,
        /// What is missing or ambiguous.
        reason: String,
    },
    /// A malformed `operatorsPackagesAndChannels` entry.
    #[error("operatorsPackagesAndChannels entry {entry:?}: {reason}")]
    PackageChannel {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `registries.conf` (or drop-in) that cannot be used.
    #[error("{}{}: {reason}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    RegistriesConf {
        /// The file.
        file: PathBuf,
        /// The 1-based line, when the error has a position.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// Every pull source of an image is blocked by `registries.conf`.
    #[error("image {image}: registry {prefix} is blocked in {} and has no usable mirror", file.display())]
    Blocked {
        /// The image.
        image: String,
        /// The `[[registry]]` prefix that blocks it.
        prefix: String,
        /// The file that defines that registry.
        file: PathBuf,
    },
    /// A malformed pull secret.
    #[error("pull secret {}: {reason}", path.display())]
    PullSecret {
        /// The file (or `<bytes>` for [`PullSecret::from_json`]).
        path: PathBuf,
        /// What is wrong (JSON position or the entry at fault).
        reason: String,
    },
    /// A configuration file that exists but cannot be read.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
