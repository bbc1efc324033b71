//! The Markdown tables the `precache_budget` benchmark prints: both modes side by side, the
//! budgets-to-baseline ratios, and, with budgets, the per-site rates and the batch order.

use crate::{Args, MIB, Outcome, REGISTRIES, fleet_summary, measure, mode_name, site_label};

fn pct(x: f64, of: f64) -> String {
    format!("{:.1}%", 100.0 * x / of)
}

pub fn print_report(a: &Args, outcomes: &[Outcome]) {
    let budget = a.site_mib as f64 * MIB;
    println!();
    println!("Fleet: {} agents; {}.", a.agents, fleet_summary(a));
    println!();
    println!(
        "| measure | {} |",
        outcomes
            .iter()
            .map(|o| mode_name(o.budgets))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(outcomes.len()));
    let row = |name: &str, f: &dyn Fn(&Outcome) -> String| {
        println!(
            "| {name} | {} |",
            outcomes.iter().map(f).collect::<Vec<_>>().join(" | ")
        );
    };
    row("result", &|o| {
        if o.succeeded {
            "every pre-cache Succeeded".into()
        } else {
            format!("FAILED: {}", o.failure.as_deref().unwrap_or("?"))
        }
    });
    row(
        "pre-caching wall time (CGU created → all Succeeded)",
        &|o| format!("{:.1} s", o.precache_secs),
    );
    row("agent sessions opened (N = no reconnects)", &|o| {
        o.sessions.to_string()
    });
    row("tasks assigned held", &|o| {
        o.clusters.iter().filter(|c| c.rec.held).count().to_string()
    });
    row("max concurrent per site (limit with budgets)", &|o| {
        let m = (0..a.sites)
            .map(|s| measure::max_concurrent(o.clusters.iter().filter(|c| c.site == s)))
            .max()
            .unwrap_or(0);
        format!("{m} ({})", a.site_max)
    });
    for (r, host) in REGISTRIES.iter().enumerate() {
        row(&format!("max concurrent from {host}"), &|o| {
            let m = measure::max_concurrent(o.clusters.iter().filter(|c| c.registry == r));
            if r == 0 {
                format!("{m} (limit {})", a.registry_max)
            } else {
                format!("{m} (no limit)")
            }
        });
    }
    row(
        "peak site rate, any 10 s window, % of the site budget",
        &|o| {
            let m = (0..a.sites)
                .map(|s| measure::peak_site_rate(&o.clusters, s))
                .fold(0.0, f64::max);
            pct(m, budget)
        },
    );
    row(
        "site rate over the windows with queued clusters: min / max % of budget",
        &|o| {
            let rates: Vec<_> = (0..a.sites)
                .filter_map(|s| measure::site_rate(&o.clusters, s))
                .collect();
            if rates.is_empty() {
                return "no window (no site queued for 10 s)".into();
            }
            let min = rates.iter().map(|r| r.min).fold(f64::INFINITY, f64::min);
            let max = rates.iter().map(|r| r.max).fold(0.0, f64::max);
            format!(
                "{} / {} over {} windows",
                pct(min, budget),
                pct(max, budget),
                rates.iter().map(|r| r.windows).sum::<usize>()
            )
        },
    );
    row(
        "hand-over in a site: a finish → the next let-in, median / max",
        &|o| {
            let mut gaps: Vec<f64> = (0..a.sites)
                .flat_map(|s| measure::handover_gaps(&o.clusters, s))
                .collect();
            if !o.budgets || gaps.is_empty() {
                return "— (nothing queued)".into();
            }
            gaps.sort_by(f64::total_cmp);
            format!(
                "{:.2} / {:.2} s ({} let-ins)",
                gaps[gaps.len() / 2],
                gaps[gaps.len() - 1],
                gaps.len()
            )
        },
    );
    row("batch k finished before batch k+2 started (pairs)", &|o| {
        let pairs = measure::batch_order(&o.clusters);
        let ok = pairs.iter().flatten().filter(|p| p.ordered()).count();
        format!("{ok} of {} ({} batches)", pairs.len(), o.batches)
    });
    row("hub CPU during pre-caching", &|o| {
        format!(
            "{:.1} s ({:.3} cores)",
            o.cpu_precache,
            o.cpu_precache / o.precache_secs.max(1e-9)
        )
    });
    row("hub CPU, whole run (start, sessions, pre-caching)", &|o| {
        format!("{:.1} s", o.cpu_total)
    });
    row("hub RSS once the sessions were up", &|o| {
        format!("{:.0} MiB", o.rss_connected_kib as f64 / 1024.0)
    });
    row("hub peak RSS (VmHWM, process tree)", &|o| {
        format!("{:.0} MiB", o.hwm_kib as f64 / 1024.0)
    });
    if let (Some(base), Some(with)) = (
        outcomes.iter().find(|o| !o.budgets),
        outcomes.iter().find(|o| o.budgets),
    ) {
        println!();
        println!("| budgets / baseline | ratio |");
        println!("|---|---|");
        println!(
            "| hub CPU seconds during pre-caching | {:.2}× |",
            with.cpu_precache / base.cpu_precache.max(1e-9)
        );
        println!(
            "| hub CPU cores during pre-caching | {:.2}× |",
            (with.cpu_precache / with.precache_secs.max(1e-9))
                / (base.cpu_precache / base.precache_secs.max(1e-9)).max(1e-9)
        );
        println!(
            "| hub peak RSS | {:.2}× |",
            with.hwm_kib as f64 / (base.hwm_kib as f64).max(1.0)
        );
    }
    for o in outcomes.iter().filter(|o| o.budgets) {
        println!();
        println!(
            "Per site, with budgets ({} MiB/s each; windows of 10 s, 1 s apart, from when every \
             cluster of the site had its task and one was let in, to the site's last let-in):",
            a.site_mib
        );
        println!();
        println!("| site | windows | span | min | max | max concurrent |");
        println!("|---|---|---|---|---|---|");
        for s in 0..a.sites {
            let mc = measure::max_concurrent(o.clusters.iter().filter(|c| c.site == s));
            match measure::site_rate(&o.clusters, s) {
                Some(r) => println!(
                    "| {} | {} | {:.1}–{:.1} s | {} | {} | {mc} |",
                    site_label(s),
                    r.windows,
                    r.from - o.cgu_at,
                    r.to - o.cgu_at,
                    pct(r.min, budget),
                    pct(r.max, budget)
                ),
                None => println!("| {} | 0 | — | — | — | {mc} |", site_label(s)),
            }
        }
        println!();
        println!("Batch order, with budgets (seconds after the CGU was created):");
        println!();
        println!("| batch k | last finish in k | first start in k+2 | ordered |");
        println!("|---|---|---|---|");
        for (k, p) in measure::batch_order(&o.clusters).iter().enumerate() {
            match p {
                Some(p) => println!(
                    "| {} | {:.1} s | {:.1} s | {} |",
                    p.k + 1,
                    p.last_finish - o.cgu_at,
                    p.first_start - o.cgu_at,
                    if p.ordered() { "yes" } else { "**no**" }
                ),
                None => println!("| {} | — | — | not measured |", k + 1),
            }
        }
    }
}
