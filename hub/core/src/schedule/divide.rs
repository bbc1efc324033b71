//! Division: the per-node caps, max-min fair (water-filling) over every bandwidth limit.
//!
//! All active clusters' caps rise together; when a limit is used up, the clusters under it stop
//! at its fair share and what they would have taken elsewhere stays for the others there. In
//! whole bytes/s: a limit that is used up gives each of its clusters the quotient and the first
//! clusters in queue order one byte more, so its caps sum to it exactly, unless another limit
//! of such a cluster has no byte left for the extra (then the sum falls short by that byte).
//! A cap is never below 1 byte/s (a cap of zero would stall a transfer; only a limit smaller
//! than its number of clusters gets there). Cost: O(L² + Σ limits per cluster) for L limits.

/// The caps of `clusters` (each given as the bandwidth limits that apply to it, as indices into
/// `bandwidth`; listed in queue order). A cluster under no bandwidth limit gets `None`.
pub fn water_fill(bandwidth: &[i64], clusters: &[Vec<usize>]) -> Vec<Option<i64>> {
    let mut remaining: Vec<i64> = bandwidth.iter().map(|b| (*b).max(0)).collect();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); bandwidth.len()];
    for (c, lims) in clusters.iter().enumerate() {
        for &l in lims {
            members[l].push(c);
        }
    }
    let mut unfrozen: Vec<i64> = members
        .iter()
        .map(|m| i64::try_from(m.len()).unwrap_or(i64::MAX))
        .collect();
    let mut cap: Vec<Option<i64>> = vec![None; clusters.len()];
    let mut frozen = vec![false; clusters.len()];
    loop {
        // The limit with the lowest fair share left: remaining / unfrozen clusters (compared
        // by cross-multiplication; ties to the lower index).
        let mut best: Option<usize> = None;
        for l in 0..remaining.len() {
            if unfrozen[l] == 0 {
                continue;
            }
            let lower = best.is_none_or(|b| {
                i128::from(remaining[l]) * i128::from(unfrozen[b])
                    < i128::from(remaining[b]) * i128::from(unfrozen[l])
            });
            if lower {
                best = Some(l);
            }
        }
        let Some(l) = best else {
            break;
        };
        let now: Vec<usize> = members[l].iter().copied().filter(|&c| !frozen[c]).collect();
        let k = i64::try_from(now.len()).unwrap_or(i64::MAX).max(1);
        let share = remaining[l] / k;
        for &c in &now {
            frozen[c] = true;
            cap[c] = Some(share);
            for &m in &clusters[c] {
                remaining[m] -= share;
                unfrozen[m] -= 1;
            }
        }
        // The remainder, a byte each, to the first clusters whose every limit has one left.
        for &c in &now {
            if remaining[l] == 0 {
                break;
            }
            if clusters[c].iter().all(|&m| remaining[m] >= 1) {
                for &m in &clusters[c] {
                    remaining[m] -= 1;
                }
                cap[c] = cap[c].map(|v| v + 1);
            }
        }
    }
    cap.into_iter().map(|c| c.map(|v| v.max(1))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_limit_sums_exactly_with_the_remainder_first() {
        let caps = water_fill(&[10], &[vec![0], vec![0], vec![0]]);
        assert_eq!(caps, [Some(4), Some(3), Some(3)]);
        let caps = water_fill(&[11], &[vec![0], vec![0], vec![0]]);
        assert_eq!(caps, [Some(4), Some(4), Some(3)]);
    }

    #[test]
    fn no_limit_no_cap() {
        assert_eq!(water_fill(&[100], &[vec![], vec![0]]), [None, Some(100)]);
    }

    #[test]
    fn a_constrained_cluster_leaves_its_share_to_the_others() {
        // Limit 0 (a site, 30) over clusters a, b, c; limit 1 (a registry, 4) over a only.
        let caps = water_fill(&[30, 4], &[vec![0, 1], vec![0], vec![0]]);
        assert_eq!(caps, [Some(4), Some(13), Some(13)]);
        // Two sites sharing one registry: the registry is the bottleneck for everyone.
        let caps = water_fill(&[100, 100, 9], &[vec![0, 2], vec![0, 2], vec![1, 2]]);
        assert_eq!(caps, [Some(3), Some(3), Some(3)]);
    }

    #[test]
    fn the_remainder_respects_other_limits() {
        // Limit 0: 10 over a, b, c (share 3, remainder 1). a is also under limit 1 = 3, so
        // limit 1 is used up first: a gets 3. Then b and c share 7: 4 and 3.
        let caps = water_fill(&[10, 3], &[vec![0, 1], vec![0], vec![0]]);
        assert_eq!(caps, [Some(3), Some(4), Some(3)]);
        // Limit 0: 35 over c0..c9 (share 3.5) is used up first; limit 1: 18 over c0..c4
        // (share 3.6) has 3 bytes left after the quotients, so only c0..c2 take an extra byte
        // from it and the other two extras go to c5 and c6. Both limits sum exactly.
        let clusters: Vec<Vec<usize>> = (0..10)
            .map(|c| if c < 5 { vec![0, 1] } else { vec![0] })
            .collect();
        let caps: Vec<i64> = water_fill(&[35, 18], &clusters)
            .into_iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(caps, [4, 4, 4, 3, 3, 4, 4, 3, 3, 3]);
        assert_eq!(caps.iter().sum::<i64>(), 35);
        assert_eq!(caps[..5].iter().sum::<i64>(), 18);
    }

    #[test]
    fn never_below_one() {
        assert_eq!(water_fill(&[1], &[vec![0], vec![0]]), [Some(1), Some(1)]);
    }
}
