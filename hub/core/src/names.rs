//! Names and labels of what a CGU creates: TALM's safe names (`NewSafeResourceName`), made
//! deterministic; the labels that tie objects to their CGU; event names; and the one FNV-1a hash
//! they are derived from (also used by `talm-hub plan` for the uids it invents).

/// CGU annotation that fixes the name suffix.
pub const NAME_SUFFIX_ANNOTATION: &str = "cluster-group-upgrades-operator/name-suffix";
/// Annotation on created objects naming their desired (unsuffixed) name.
pub const RNAME_ANNOTATION: &str = "cluster-group-upgrades-operator/rname";

/// Labels on the objects a CGU creates (Placements, bindings, views, actions), by which talm
/// finds them again.
pub mod labels {
    #![allow(missing_docs)]
    pub const APP: &str = "app";
    pub const APP_VALUE: &str = "openshift-cluster-group-upgrades";
    pub const CGU: &str = "openshift-cluster-group-upgrades/clusterGroupUpgrade";
    pub const CGU_NS: &str = "openshift-cluster-group-upgrades/clusterGroupUpgradeNamespace";
    pub const FOR_POLICY: &str = "openshift-cluster-group-upgrades/forPolicy";
    pub const VELERO_EXCLUDE: &str = "velero.io/exclude-from-backup";
}

const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The 5-character suffix TALM would pick at random, derived here from a stable seed (the CGU
/// uid, or `<namespace>/<name>` without one) so decisions are reproducible.
pub fn derived_suffix(seed: &str) -> String {
    let mut h = fnv1a(FNV_OFFSET_BASIS, seed.bytes());
    let mut out = String::with_capacity(5);
    for _ in 0..5 {
        let i = (h % ALPHABET.len() as u64) as usize;
        out.push(char::from(ALPHABET[i]));
        h /= ALPHABET.len() as u64;
    }
    out
}

/// The longest object name (a DNS-1123 subdomain).
pub const NAME_MAX: usize = 253;
/// The longest label value.
pub const LABEL_VALUE_MAX: usize = 63;

/// The [`fnv64`] seed of the hash that keeps cut names unique.
const CUT_NAME_SEED: u64 = 5;

/// TALM's safe name: `lower(desired)` and `-<suffix>`, kept within
/// `253 − len(suffix) − len(namespace) − 1` characters for the desired part.
///
/// When `lower(desired)` is longer than that, TALM cuts it, so two desired names that differ
/// only past the cut (a long CGU name with two policies) got the same object name. talm keeps a
/// readable prefix and adds `-` and 16 hex digits of a hash of the whole desired name, so names
/// stay unique and within bounds; names that fit are TALM's, unchanged.
pub fn safe_name(desired: &str, namespace: &str, suffix: &str) -> String {
    let max = NAME_MAX.saturating_sub(suffix.len() + namespace.len() + 1);
    let lower = desired.to_lowercase();
    if lower.chars().count() <= max {
        let name = lower.trim_end_matches(['-', '.']);
        return format!("{name}-{suffix}");
    }
    let name = cut_with_hash(&lower, max, CUT_NAME_SEED);
    format!("{name}-{suffix}")
}

/// The ManifestWork a ManifestWork rollout creates from `template` in each cluster namespace:
/// TALM's `<cgu namespace>.<template>`, cut with a hash of the whole name (as [`safe_name`]
/// does) when it would pass [`NAME_MAX`] characters.
pub fn manifest_work_name(cgu_namespace: &str, template: &str) -> String {
    let name = format!("{cgu_namespace}.{template}");
    if name.chars().count() <= NAME_MAX {
        return name;
    }
    cut_with_hash(&name, NAME_MAX, CUT_NAME_SEED)
}

/// `value` as a label value: itself when it fits in [`LABEL_VALUE_MAX`] characters (every CGU
/// name TALM can label), otherwise a readable prefix, `-` and 16 hex digits of a hash of the
/// whole value, so long CGU and policy names still give valid, distinct label values.
pub fn label_value(value: &str) -> String {
    if value.chars().count() <= LABEL_VALUE_MAX {
        return value.to_string();
    }
    cut_with_hash(value, LABEL_VALUE_MAX, CUT_NAME_SEED)
}

/// Whether `meta` carries the labels talm puts on what CGU `namespace/name` creates.
pub fn labelled_for(meta: &talm_shared::api::ObjectMeta, namespace: &str, name: &str) -> bool {
    meta.labels.as_ref().is_some_and(|l| {
        l.get(labels::CGU).is_some_and(|v| *v == label_value(name))
            && l.get(labels::CGU_NS)
                .is_some_and(|v| *v == label_value(namespace))
    })
}

/// `value` cut to at most `max` characters: a prefix (without trailing `-`, `.` or `_`), `-`
/// and the 16 hex digits of the hash of all of `value`; just the hash when no prefix fits.
fn cut_with_hash(value: &str, max: usize, seed: u64) -> String {
    let hash = format!("{:016x}", fnv64(seed, &[value]));
    let keep = max.saturating_sub(hash.len() + 1);
    let prefix: String = value.chars().take(keep).collect();
    let prefix = prefix.trim_end_matches(['-', '.', '_']);
    if prefix.is_empty() {
        hash
    } else {
        format!("{prefix}-{hash}")
    }
}

/// The FNV-1a 64-bit offset basis.
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// 64-bit FNV-1a over `bytes`, starting from `h`: stable across platforms and releases, which
/// is what names derived from it need.
fn fnv1a(mut h: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// 64-bit FNV-1a over `parts`, each followed by a `0xff` byte (which UTF-8 text never holds,
/// so `("ab", "c")` and `("a", "bc")` differ). `seed` is mixed into the offset basis so
/// independent uses (event names, uids) do not collide.
pub fn fnv64(seed: u64, parts: &[&str]) -> u64 {
    fnv1a(
        FNV_OFFSET_BASIS ^ seed,
        parts
            .iter()
            .flat_map(|p| p.bytes().chain(std::iter::once(0xff))),
    )
}

/// `reportingController` of talm's events (TALM's value).
pub const EVENT_REPORTING_CONTROLLER: &str = "ClusterGroupUpgrade";

/// The [`fnv64`] seed of event names.
const EVENT_NAME_SEED: u64 = 3;

/// An event's name: the CGU's name (cut so the whole stays within 253 characters), a dot and
/// 16 hex digits hashed from `parts`, which the caller chooses to make the name unique (the
/// CGU, the time, a sequence number, its own identity).
pub fn event_name(cgu_name: &str, parts: &[&str]) -> String {
    // 253 (the longest name) − 17 (".<16 hex digits>").
    let prefix: String = cgu_name.chars().take(253 - 17).collect();
    format!("{prefix}.{:016x}", fnv64(EVENT_NAME_SEED, parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kuttl_suffix_gives_kuttl_names() {
        assert_eq!(
            safe_name(
                "cgu-upgrade-complete-policy1-common-cluster-version-policy-placement",
                "default",
                "kuttl"
            ),
            "cgu-upgrade-complete-policy1-common-cluster-version-policy-placement-kuttl"
        );
    }

    #[test]
    fn long_names_are_truncated_to_fit() {
        let long = "A".repeat(400);
        let n = safe_name(&long, "default", "kuttl");
        assert_eq!(n.len(), 253 - "default".len());
        assert!(n.ends_with("-kuttl"));
        assert!(n.starts_with("aaa"));
    }

    #[test]
    fn cut_names_stay_unique_and_fit() {
        // Issue 14 item 1: a 225-character CGU name with two policies gave one name for both.
        let cgu = "c".repeat(225);
        let a = safe_name(&format!("{cgu}-policy-a-placement"), "default", "kuttl");
        let b = safe_name(&format!("{cgu}-policy-b-placement"), "default", "kuttl");
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!(n.len() <= 253 - "default".len(), "{n}");
            assert!(
                n.starts_with(&"c".repeat(100)) && n.ends_with("-kuttl"),
                "{n}"
            );
        }
        // Stable: the same inputs give the same name.
        assert_eq!(
            a,
            safe_name(&format!("{cgu}-policy-a-placement"), "default", "kuttl")
        );
    }

    #[test]
    fn label_values_fit_and_stay_distinct() {
        assert_eq!(label_value("cgu-1"), "cgu-1");
        let exact = "a".repeat(63);
        assert_eq!(label_value(&exact), exact);
        let a = label_value(&format!("{}-x", "a".repeat(100)));
        let b = label_value(&format!("{}-y", "a".repeat(100)));
        assert_ne!(a, b);
        for v in [&a, &b] {
            assert_eq!(v.len(), 63);
            assert!(v.starts_with("aaa") && v.as_bytes()[46] == b'-');
        }
        // A prefix that would end in a separator is trimmed so the value ends alphanumeric.
        let v = label_value(&format!("{}.{}", "b".repeat(45), "z".repeat(40)));
        assert!(!v.contains(".-"), "{v}");
    }

    #[test]
    fn derived_suffix_is_stable_and_short() {
        let a = derived_suffix("uid-1");
        assert_eq!(a, derived_suffix("uid-1"));
        assert_ne!(a, derived_suffix("uid-2"));
        assert_eq!(a.len(), 5);
        assert!(a.bytes().all(|b| ALPHABET.contains(&b)));
    }

    #[test]
    fn derived_suffixes_do_not_change_across_releases() {
        // Recorded in status.safeResourceNames of running CGUs: a change would rename objects.
        assert_eq!(derived_suffix("uid-1"), "2z47v");
        assert_eq!(derived_suffix("default/cgu"), "wtd7h");
    }

    #[test]
    fn fnv64_is_stable_and_separates_parts() {
        assert_eq!(fnv64(0, &["a"]), 0x089b_c907_b544_c769);
        assert_eq!(fnv64(1, &["a", "bc"]), 0x139d_165b_ac9e_88e0);
        assert_eq!(fnv64(1, &["ab", "c"]), 0x6049_3827_86be_df8a);
        assert_ne!(fnv64(0, &["a"]), fnv64(1, &["a"]));
    }

    #[test]
    fn event_names_fit_and_are_stable() {
        assert_eq!(
            event_name("cgu-1", &["ns", "cgu-1", "1767261600000000000", "0"]),
            "cgu-1.c6e3d275099e1b4e"
        );
        let long = "c".repeat(300);
        let n = event_name(&long, &["x"]);
        assert_eq!(n.len(), 253);
        assert!(n.starts_with(&"c".repeat(236)) && n.as_bytes()[236] == b'.');
    }
}
