//! The pre-cache spec as `precache run --spec FILE` reads it: YAML or JSON with
//! `PrecachingSpec`'s camelCase fields (unknown fields are refused, naming the field), and
//! `spaceRequired` as the hub sends it (a GiB integer) or with a unit as in a PreCachingConfig
//! (`"40 GiB"`, `"38.5 GB"`; converted as TALM does: base 2 with an `i`, base 10 without,
//! rounded up to whole GiB).

use std::path::Path;

use serde::Deserialize;
use talm_shared::api::cgu::PrecachingSpec;

/// The file's shape: the spec's fields, nothing else.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpecFile {
    #[serde(default)]
    platform_image: String,
    #[serde(default)]
    operators_indexes: Vec<String>,
    #[serde(default)]
    operators_packages_and_channels: Vec<String>,
    #[serde(default)]
    exclude_precache_patterns: Vec<String>,
    #[serde(default)]
    space_required: Option<SpaceValue>,
    #[serde(default)]
    additional_images: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SpaceValue {
    Int(u64),
    Text(String),
}

/// Reads and validates a spec file.
pub fn load(path: &Path) -> Result<PrecachingSpec, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a spec (JSON when it starts with `{`, YAML otherwise).
pub fn parse(text: &str) -> Result<PrecachingSpec, String> {
    let file: SpecFile = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| e.to_string())?
    } else if text.trim().is_empty() {
        return Err("the spec is empty".into());
    } else {
        talm_shared::yaml::from_str(text).map_err(|e| e.to_string())?
    };
    let space_required = match file.space_required {
        None => String::new(),
        Some(SpaceValue::Int(n)) => n.to_string(),
        Some(SpaceValue::Text(t)) => space_gib(&t)
            .map_err(|e| format!("spaceRequired {t:?}: {e}"))?
            .to_string(),
    };
    let spec = PrecachingSpec {
        platform_image: file.platform_image,
        operators_indexes: file.operators_indexes,
        operators_packages_and_channels: file.operators_packages_and_channels,
        exclude_precache_patterns: file.exclude_precache_patterns,
        space_required,
        additional_images: file.additional_images,
    };
    validate(&spec)?;
    Ok(spec)
}

/// The checks the hub makes before it sends a spec (TALM's messages).
pub fn validate(spec: &PrecachingSpec) -> Result<(), String> {
    let has_index = spec.operators_indexes.iter().any(|i| !i.trim().is_empty());
    let has_pkg = spec
        .operators_packages_and_channels
        .iter()
        .any(|p| !p.trim().is_empty());
    if has_index && !has_pkg {
        return Err("olm index provided, but no packages".into());
    }
    if !has_index
        && spec.platform_image.trim().is_empty()
        && spec.additional_images.iter().all(|i| i.trim().is_empty())
    {
        return Err("no software spec provided (platformImage, operatorsIndexes and additionalImages are all empty)".into());
    }
    space_gib(&spec.space_required).map(drop)
}

/// `spaceRequired` in GiB: a bare integer is GiB (the hub's form; empty is 0), a value with a
/// unit is converted as TALM does.
pub fn space_gib(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(0);
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        "expected a number of GiB or a value with a unit such as \"40 GiB\"".to_string()
    })?;
    let unit = unit.trim().to_ascii_lowercase();
    let factor: f64 = match unit.as_str() {
        "b" | "bytes" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "pb" => 1e15,
        "kib" => 1024f64,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        "pib" => 1024f64.powi(5),
        other => return Err(format!("unknown unit {other:?}")),
    };
    let gib = (value * factor / 1024f64.powi(3)).ceil();
    if !gib.is_finite() || !(0.0..=1e15).contains(&gib) {
        return Err("out of range".into());
    }
    Ok(gib as u64)
}

/// sha256 of the spec's JSON (names the spec in the status file).
pub fn hash(spec: &PrecachingSpec) -> String {
    let bytes = serde_json::to_vec(spec).unwrap_or_default();
    super::cache::Digest::of(&bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json() {
        let y = parse(
            "platformImage: r.io/rel@sha256:00\nadditionalImages: [a.io/x:1]\nspaceRequired: 40 GiB\n",
        )
        .unwrap();
        assert_eq!(y.platform_image, "r.io/rel@sha256:00");
        assert_eq!(y.space_required, "40");
        let j = parse(r#"{"additionalImages":["a.io/x:1"],"spaceRequired":"35"}"#).unwrap();
        assert_eq!(j.space_required, "35");
        let n = parse("additionalImages: [a.io/x:1]\nspaceRequired: 7\n").unwrap();
        assert_eq!(n.space_required, "7");
    }

    #[test]
    fn bad_specs_are_named() {
        let e = parse("platformImage: r.io/rel:1\nplatfromImage: x\n").unwrap_err();
        assert!(e.contains("platfromImage"), "{e}");
        let e = parse(r#"{"additionalImages":["a"],"extra":1}"#).unwrap_err();
        assert!(e.contains("extra"), "{e}");
        let e = parse("operatorsIndexes: [i.io/idx:1]\n").unwrap_err();
        assert!(e.contains("no packages"), "{e}");
        let e = parse("spaceRequired: 3\n").unwrap_err();
        assert!(e.contains("no software spec"), "{e}");
        let e = parse("additionalImages: [a]\nspaceRequired: 12 XB\n").unwrap_err();
        assert!(e.contains("spaceRequired"), "{e}");
        assert!(parse("").is_err());
        assert!(parse("additionalImages: 3\n").is_err());
    }

    /// Issue 14 item 5: 99 aliases of a 256 KiB image name (25 MiB once expanded).
    #[test]
    fn alias_bombs_are_refused() {
        let mut text = format!(
            "platformImage: &s r.io/{}\nadditionalImages:\n",
            "x".repeat(256 * 1024)
        );
        for _ in 0..99 {
            text.push_str("- *s\n");
        }
        let e = parse(&text).unwrap_err();
        assert!(e.contains("aliases expand the document beyond"), "{e}");
    }

    #[test]
    fn space_conversions_follow_talm() {
        for (input, want) in [
            ("2500000 KB", 3),
            ("3100 MB", 3),
            ("40 GB", 38),
            ("38.5 GB", 36),
            ("2 TB", 1863),
            ("2500000 KiB", 3),
            ("3100 MiB", 4),
            ("40 GiB", 40),
            ("35", 35),
            ("", 0),
        ] {
            assert_eq!(space_gib(input), Ok(want), "{input}");
        }
        assert!(space_gib("abc 123").is_err());
        assert!(space_gib("-1 GiB").is_err());
    }
}
