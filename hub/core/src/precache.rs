//! The pre-cache spec (docs/contract.md §4.1): derived from the policies, merged with the
//! PreCachingConfig and the deprecated overrides ConfigMap, `spaceRequired` normalised to GiB.

use serde_json::Value;
use talm_shared::api::cgu::{ClusterGroupUpgrade, PrecachingSpec};
use talm_shared::api::rhacm::{OVERRIDES_CONFIGMAP, Policy, overrides_keys};

use crate::snapshot::Snapshot;
use crate::validate::policy_objects;

/// The default `spaceRequired`.
pub const DEFAULT_SPACE_REQUIRED: &str = "35 GiB";

/// Parses a size (`"40 GiB"`, `"38.5 GB"`, `"1073741824"`) and returns whole GiB, rounded up,
/// as TALM stores it. Units with an `i` are base 2, the others base 10.
pub fn parse_space_required(s: &str) -> Result<String, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let bad = || {
        format!(
            "invalid spaceRequired {s:?}: expected a size such as \"40 GiB\", \"38.5 GB\" or \"1073741824\""
        )
    };
    if num.is_empty() {
        return Err(bad());
    }
    let value: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "PB" => 1e15,
        "KiB" => 1024f64,
        "MiB" => 1024f64.powi(2),
        "GiB" => 1024f64.powi(3),
        "TiB" => 1024f64.powi(4),
        "PiB" => 1024f64.powi(5),
        _ => return Err(bad()),
    };
    let gib = value * mult / 1024f64.powi(3);
    if !gib.is_finite() || gib < 0.0 {
        return Err(bad());
    }
    Ok(format!("{}", gib.ceil() as u64))
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Operators and indexes found in the policies' Subscriptions and CatalogSources, in order:
/// present policies first (spec order), then compliant ones.
fn derive_operators(policies: &[&Policy]) -> (Vec<String>, Vec<String>) {
    let mut packages = Vec::new();
    let mut indexes = Vec::new();
    for p in policies {
        let Ok(objects) = policy_objects(p) else {
            continue;
        };
        for o in objects.iter().filter(|o| !o.must_not_have()) {
            match o.kind() {
                "Subscription" => {
                    let name = o
                        .object
                        .pointer("/spec/name")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let channel = o
                        .object
                        .pointer("/spec/channel")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let entry = format!("{name}:{channel}");
                    if !name.is_empty() && !packages.contains(&entry) {
                        packages.push(entry);
                    }
                }
                "CatalogSource" => {
                    if let Some(img) = o.object.pointer("/spec/image").and_then(Value::as_str)
                        && !indexes.iter().any(|i: &String| i == img)
                    {
                        indexes.push(img.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    (packages, indexes)
}

/// Builds the pre-cache spec for a CGU, or the `PrecacheSpecIncomplete` message.
///
/// `platform_image` is the one validation resolved from the ClusterVersion policies.
pub fn build_spec(
    cgu: &ClusterGroupUpgrade,
    policies: &[&Policy],
    platform_image: Option<&str>,
    snap: &Snapshot,
) -> Result<PrecachingSpec, String> {
    const PREFIX: &str = "Precaching spec is incomplete: ";
    let ns = cgu.metadata.namespace.as_deref().unwrap_or("default");
    let pcc = match &cgu.spec.pre_caching_config_ref {
        Some(r) if !r.name.is_empty() => {
            let pns = if r.namespace.is_empty() {
                ns
            } else {
                r.namespace.as_str()
            };
            match snap.precaching_config(pns, &r.name) {
                Some(s) => Some(s.clone()),
                None => {
                    return Err(format!(
                        "{PREFIX}failed to get PreCachingConfig resource due to PreCachingConfig.ran.openshift.io \"{}\" not found",
                        r.name
                    ));
                }
            }
        }
        _ => None,
    };
    let cm = snap.config_map(ns, OVERRIDES_CONFIGMAP);
    let cm_list = |k: &str| {
        cm.and_then(|c| c.data.get(k))
            .map(|s| lines(s))
            .unwrap_or_default()
    };
    let (derived_packages, indexes) = derive_operators(policies);

    let pcc_packages = pcc
        .as_ref()
        .and_then(|p| p.overrides.as_ref())
        .and_then(|o| o.operators_packages_and_channels.clone())
        .unwrap_or_default();
    let packages = if !pcc_packages.is_empty() {
        pcc_packages
    } else if !cm_list(overrides_keys::PACKAGES_AND_CHANNELS).is_empty() {
        cm_list(overrides_keys::PACKAGES_AND_CHANNELS)
    } else {
        derived_packages
    };
    let pcc_excludes = pcc
        .as_ref()
        .and_then(|p| p.exclude_precache_patterns.clone())
        .unwrap_or_default();
    let excludes = if !pcc_excludes.is_empty() {
        pcc_excludes
    } else {
        cm_list(overrides_keys::EXCLUDE_PATTERNS)
    };
    let pcc_space = pcc
        .as_ref()
        .and_then(|p| p.space_required.clone())
        .filter(|s| !s.trim().is_empty());
    let cm_space = cm
        .and_then(|c| c.data.get(overrides_keys::SPACE_REQUIRED))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let space = pcc_space
        .or(cm_space)
        .unwrap_or_else(|| DEFAULT_SPACE_REQUIRED.to_string());
    let space = parse_space_required(&space)
        .map_err(|e| format!("{PREFIX}failed to get PreCachingConfig resource due to {e}"))?;
    let additional = pcc
        .as_ref()
        .and_then(|p| p.additional_images.clone())
        .unwrap_or_default();

    let spec = PrecachingSpec {
        platform_image: platform_image.unwrap_or("").to_string(),
        operators_indexes: indexes,
        operators_packages_and_channels: packages,
        exclude_precache_patterns: excludes,
        space_required: space,
        additional_images: additional,
    };
    if !spec.operators_indexes.is_empty() && spec.operators_packages_and_channels.is_empty() {
        return Err(format!(
            "{PREFIX}inconsistent precaching configuration: olm index provided, but no packages"
        ));
    }
    if spec.operators_indexes.is_empty() && spec.platform_image.is_empty() {
        return Err(format!(
            "{PREFIX}inconsistent precaching configuration: no software spec provided"
        ));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_required_vectors() {
        for (input, want) in [
            ("1073741824", "1"),
            ("2500000 KB", "3"),
            ("3100 MB", "3"),
            ("40 GB", "38"),
            ("38.5 GB", "36"),
            ("2 TB", "1863"),
            ("1 PB", "931323"),
            ("2500000 KiB", "3"),
            ("3100 MiB", "4"),
            ("40 GiB", "40"),
            ("40GiB", "40"),
            ("35 GiB", "35"),
        ] {
            assert_eq!(parse_space_required(input).as_deref(), Ok(want), "{input}");
        }
        for bad in ["abc 123", "123 ab", "-1 GiB", "", "1.2.3 GB"] {
            let e = parse_space_required(bad).unwrap_err();
            assert!(e.contains("invalid spaceRequired"), "{bad}: {e}");
        }
    }
}
