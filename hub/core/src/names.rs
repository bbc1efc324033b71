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

/// `lower(desired)` truncated to fit `253 − len(suffix) − len(namespace) − 1`, then `-<suffix>`.
pub fn safe_name(desired: &str, namespace: &str, suffix: &str) -> String {
    let max = 253usize.saturating_sub(suffix.len() + namespace.len() + 1);
    let mut name: String = desired.to_lowercase().chars().take(max).collect();
    while name.ends_with(['-', '.']) {
        name.pop();
    }
    format!("{name}-{suffix}")
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
