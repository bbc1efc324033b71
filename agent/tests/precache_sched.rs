//! The pre-cache under the hub's scheduler, against a real `docker-registry` (issue 17 §2, §4):
//!
//! - a capped `talm-agent precache run` of ≥ 64 MiB never exceeds the cap by more than 1% in
//!   any 10 s window, measured at the registry (its log's `http.response.written` of blob GETs,
//!   each spread over its request's duration, as the pre-cache benchmark reads it);
//! - the daemon against an in-process hub double that speaks the session protocol: a held
//!   assignment lists the images and reports total and registry without a single blob GET (also
//!   across an agent restart); a `TaskUpdate` lets it in with a cap; a second one lowers the cap
//!   mid-transfer and the registry's rate follows, with no blob fetched twice; the task
//!   succeeds.
//!
//! Only upper bounds on the rate are asserted: a loaded machine can only make transfers slower.
// Tests run the agent binary, the registry and skopeo: spawning processes is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod precache_support;

use std::time::Duration;

use precache_support::node::{Node, text};
use precache_support::{BlobRequest, Fixture, LayerSizes, Registry, build_fixture_with};

const MIB: u64 = 1 << 20;

/// ~66 MiB of unique blobs: three shared base layers (24 + 8 + 2 MiB) and 16 images with a
/// 2 MiB layer of their own.
fn big_fixture(reg: &Registry) -> Fixture {
    build_fixture_with(
        reg,
        16,
        None,
        LayerSizes {
            base: [24 << 20, 8 << 20, 2 << 20],
            unique: 2 << 20,
            seed: 17,
        },
    )
}

/// The release's component images, by digest: listing them needs manifests only (no blob).
fn component_images(fx: &Fixture) -> Vec<String> {
    fx.release_images.iter().map(|(_, s)| s.clone()).collect()
}

/// A blob GET as an interval of wall time, in seconds since the epoch: (start, end, bytes).
fn intervals(reqs: &[BlobRequest]) -> Vec<(f64, f64, u64)> {
    reqs.iter()
        .map(|r| {
            let end: jiff::Timestamp = r.end.parse().expect("registry log time");
            let end = end.as_nanosecond() as f64 / 1e9;
            (end - r.duration_s, end, r.written)
        })
        .collect()
}

/// Bytes the registry served in `[from, to)`, each request's bytes spread evenly over its
/// duration (a request of no measurable duration counts at its end).
fn served_in(iv: &[(f64, f64, u64)], from: f64, to: f64) -> f64 {
    iv.iter()
        .map(|&(s, e, n)| {
            if e - s <= 1e-6 {
                if e >= from && e < to { n as f64 } else { 0.0 }
            } else {
                let overlap = (to.min(e) - from.max(s)).max(0.0);
                n as f64 * overlap / (e - s)
            }
        })
        .sum()
}

/// The largest amount served in any 10 s window that starts in `[from, until - 10]` (100 ms
/// steps), with the window's start.
fn worst_window(iv: &[(f64, f64, u64)], from: f64, until: f64) -> (f64, f64) {
    let mut worst = (0.0, from);
    let mut t = from;
    while t + 10.0 <= until + 1e-9 {
        let got = served_in(iv, t, t + 10.0);
        if got > worst.0 {
            worst = (got, t);
        }
        t += 0.1;
    }
    worst
}

fn span(iv: &[(f64, f64, u64)]) -> (f64, f64) {
    let first = iv.iter().map(|i| i.0).fold(f64::MAX, f64::min);
    let last = iv.iter().map(|i| i.1).fold(f64::MIN, f64::max);
    (first, last)
}

#[test]
fn a_capped_pull_stays_under_the_cap_in_every_ten_second_window_at_the_registry() {
    let reg = Registry::start_plain();
    let fx = big_fixture(&reg);
    let images = component_images(&fx);
    let unique = fx.unique_bytes(&images);
    assert!(unique >= 64 * MIB, "the pull is {unique} bytes");
    let node = Node::new(&reg);
    let list: Vec<String> = images.iter().map(|i| format!("\"{i}\"")).collect();
    let spec = node.spec(&format!(
        "additionalImages: [{}]\nspaceRequired: \"1\"\n",
        list.join(", ")
    ));
    let cap = 5 * MIB;
    let before = reg.blob_requests().len();
    let out = node.run(
        &spec,
        &[
            "--no-import",
            "--parallel",
            "4",
            "--bandwidth-limit",
            &cap.to_string(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let reqs = reg.blob_requests()[before..].to_vec();
    let served: u64 = reqs.iter().map(|r| r.written).sum();
    assert_eq!(served, unique, "every blob once");
    let iv = intervals(&reqs);
    let (first, last) = span(&iv);
    // At the cap the transfer cannot take less than unique / cap (> 13 s): there are full
    // 10 s windows to look at.
    assert!(
        last - first > 10.0,
        "the transfer took {:.1} s",
        last - first
    );
    let (worst, at) = worst_window(&iv, first, last);
    let limit = cap as f64 * 10.0;
    eprintln!(
        "cap {} MiB/s: worst 10 s window at the registry {:.3} MiB/s ({:+.2}%, at +{:.1} s); whole transfer {:.3} MiB/s over {:.1} s",
        cap / MIB,
        worst / 10.0 / MIB as f64,
        (worst / limit - 1.0) * 100.0,
        at - first,
        served as f64 / (last - first) / MIB as f64,
        last - first
    );
    assert!(
        worst <= limit * 1.01,
        "{worst} bytes in the 10 s window from +{:.1} s, the cap allows {limit} (+1%)",
        at - first
    );
}
