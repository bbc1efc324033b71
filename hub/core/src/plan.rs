//! The remediation plan (docs/contract.md §3.3) and `computedMaxConcurrency`.

use std::collections::HashSet;

/// `maxConcurrency` when `0 < maxConcurrency < n`, otherwise `n` (all selected clusters count,
/// compliant ones and canaries included).
pub fn computed_max_concurrency(max_concurrency: i32, selected: usize) -> i32 {
    let n = i32::try_from(selected).unwrap_or(i32::MAX);
    if max_concurrency > 0 && max_concurrency < n {
        max_concurrency
    } else {
        n
    }
}

/// Builds the batches: each non-compliant canary alone, in spec order; then the other
/// non-compliant clusters in selection order, `computed_max` per batch. Compliant clusters use
/// no slot. Returns an empty plan when nothing needs remediation.
pub fn build_plan(
    clusters: &[String],
    canaries: &[String],
    computed_max: i32,
    non_compliant: &dyn Fn(&str) -> bool,
) -> Vec<Vec<String>> {
    let mut plan: Vec<Vec<String>> = Vec::new();
    let mut is_canary: HashSet<&str> = HashSet::new();
    for c in canaries {
        if non_compliant(c) {
            plan.push(vec![c.clone()]);
            is_canary.insert(c.as_str());
        }
    }
    let cap = usize::try_from(computed_max.max(1)).unwrap_or(1);
    let mut batch: Vec<String> = Vec::new();
    for c in clusters {
        if is_canary.contains(c.as_str()) || !non_compliant(c) {
            continue;
        }
        batch.push(c.clone());
        if batch.len() == cap {
            plan.push(std::mem::take(&mut batch));
        }
    }
    if !batch.is_empty() {
        plan.push(batch);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn computed_max_concurrency_rules() {
        assert_eq!(computed_max_concurrency(3, 1), 1);
        assert_eq!(computed_max_concurrency(0, 5), 5);
        assert_eq!(computed_max_concurrency(2, 5), 2);
        assert_eq!(computed_max_concurrency(5, 5), 5);
        assert_eq!(computed_max_concurrency(-1, 4), 4);
        assert_eq!(computed_max_concurrency(0, 0), 0);
    }

    #[test]
    fn canaries_first_and_compliant_use_no_slot() {
        let clusters = v(&["a", "b", "c", "d", "e", "f"]);
        let nc = |c: &str| c != "c";
        let plan = build_plan(&clusters, &v(&["e"]), 2, &nc);
        assert_eq!(plan, vec![v(&["e"]), v(&["a", "b"]), v(&["d", "f"])]);
    }

    #[test]
    fn compliant_canary_is_not_a_batch() {
        let clusters = v(&["a", "b"]);
        let nc = |c: &str| c != "a";
        let plan = build_plan(&clusters, &v(&["a"]), 1, &nc);
        assert_eq!(plan, vec![v(&["b"])]);
    }

    #[test]
    fn cluster_selector_case_b() {
        // §6.3 B: spoke3 not matched anywhere, maxConcurrency 2.
        let clusters = v(&["spoke1", "spoke2", "spoke5", "spoke6", "spoke3", "spoke4"]);
        let nc = |c: &str| c != "spoke3";
        let plan = build_plan(&clusters, &[], 2, &nc);
        assert_eq!(
            plan,
            vec![
                v(&["spoke1", "spoke2"]),
                v(&["spoke5", "spoke6"]),
                v(&["spoke4"])
            ]
        );
    }

    #[test]
    fn nothing_to_do_is_empty() {
        let plan = build_plan(&v(&["a"]), &[], 1, &|_| false);
        assert!(plan.is_empty());
    }
}
