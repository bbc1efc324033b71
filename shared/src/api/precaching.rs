//! `PreCachingConfig` (`ran.openshift.io/v1alpha1`): per-CGU pre-cache settings
//! (docs/contract.md §2.5). Namespaced, no status, no validation.

#[cfg(feature = "kube")]
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pre-cache settings referenced by `spec.preCachingConfigRef`.
#[cfg_attr(
    feature = "kube",
    derive(CustomResource),
    kube(
        group = "ran.openshift.io",
        version = "v1alpha1",
        kind = "PreCachingConfig",
        namespaced,
        derive = "PartialEq",
        crates(kube_core = "::kube_core"),
    )
)]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreCachingConfigSpec {
    /// Overrides of the derived spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<PreCachingConfigOverrides>,
    /// Space needed, e.g. `"40 GiB"`, `"38.5 GB"` or `"1073741824"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space_required: Option<String>,
    /// Regular expressions; matching release images are not pre-cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_precache_patterns: Option<Vec<String>>,
    /// Extra images to pre-cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_images: Option<Vec<String>>,
}

/// Overrides of what talm derives from the policies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreCachingConfigOverrides {
    /// Deprecated and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_image: Option<String>,
    /// Deprecated and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operators_indexes: Option<Vec<String>>,
    /// `package:channel` entries; honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operators_packages_and_channels: Option<Vec<String>>,
    /// Deprecated and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_cache_image: Option<String>,
}

/// PreCachingConfig has no status; this placeholder keeps the plain root's shape.
#[cfg(not(feature = "kube"))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NoStatus {}

#[cfg(not(feature = "kube"))]
super::plain_root!(
    /// A PreCachingConfig object.
    PreCachingConfig,
    PreCachingConfigSpec,
    NoStatus,
    "ran.openshift.io/v1alpha1",
    "PreCachingConfig"
);
