//! Names and labels of the objects a CGU creates: TALM's safe names (`NewSafeResourceName`),
//! made deterministic, and the labels that tie the objects to their CGU.

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
    // FNV-1a 64: stable across platforms and releases.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = String::with_capacity(5);
    for _ in 0..5 {
        let i = (h % ALPHABET.len() as u64) as usize;
        out.push(char::from(ALPHABET[i]));
        h /= ALPHABET.len() as u64;
    }
    out
}

/// `lower(desired)` truncated to fit `253 − len(suffix) − len(namespace) − 1`, then `-<suffix>`.
pub fn safe_name(desired: &str, namespace: &str, suffix: &str) -> String {
    let max = 253usize.saturating_sub(suffix.len() + namespace.len() + 1);
    let mut name: String = desired.to_lowercase().chars().take(max).collect();
    while name.ends_with(['-', '.']) {
        name.pop();
    }
    format!("{name}-{suffix}")
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
    fn derived_suffix_is_stable_and_short() {
        let a = derived_suffix("uid-1");
        assert_eq!(a, derived_suffix("uid-1"));
        assert_ne!(a, derived_suffix("uid-2"));
        assert_eq!(a.len(), 5);
        assert!(a.bytes().all(|b| ALPHABET.contains(&b)));
    }
}
