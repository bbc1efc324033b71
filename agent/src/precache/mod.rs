//! Filtered image pre-caching (`talm-agent precache run|status` and the hub-assigned `Precache`
//! task). Work in progress: see the submodules.
//!
//! - [`sources`]: the image list: release `image-references`, file-based operator catalogs,
//!   exclude patterns, `registries.conf` mirrors and the node's pull secret (pure parsing, no I/O
//!   beyond reading the files it is given).

pub mod sources;
