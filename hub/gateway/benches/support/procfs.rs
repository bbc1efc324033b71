//! A process's CPU time and memory from `/proc`, for the benchmarks that run the hub as a
//! child process (`loadgen`, `operator`, `precache_budget`): of one process, or summed over a
//! process and its descendants (the "process tree").

// Each benchmark uses a subset of these helpers; the rest is dead code in that benchmark.
#![allow(dead_code)]

/// Clock ticks per second of `/proc/<pid>/stat` times (`CLK_TCK`, 100 on Linux).
pub const TICKS_PER_SEC: f64 = 100.0;

/// One process's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcStats {
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak resident set), KiB.
    pub hwm_kib: u64,
}

impl ProcStats {
    /// CPU seconds.
    pub fn cpu_secs(&self) -> f64 {
        self.cpu_ticks as f64 / TICKS_PER_SEC
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces), so that
/// index 0 is field 3 (`state`) of proc(5).
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    after.split_whitespace().map(str::to_string).collect()
}

/// CPU and memory of `pid` (zeros once it has gone).
pub fn proc_stats(pid: u32) -> ProcStats {
    let f = stat_fields(pid);
    // utime and stime are fields 14 and 15 of proc(5).
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    ProcStats {
        cpu_ticks: field(11) + field(12),
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    }
}

/// `pid` and every live descendant of it.
pub fn tree_pids(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            // Field 4 of proc(5), the parent pid.
            if let Some(pp) = stat_fields(p).get(1).and_then(|v| v.parse::<u32>().ok()) {
                parent_of.push((p, pp));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// The figures of `pid`'s process tree, summed over its live processes (the CPU time of
/// children that have exited and been waited for is included through `cutime`/`cstime`). The
/// summed VmHWM is an upper bound of the tree's peak: each process's peak may fall at a
/// different time.
pub fn tree_stats(pid: u32) -> ProcStats {
    let mut sum = ProcStats::default();
    for p in tree_pids(pid) {
        let s = proc_stats(p);
        let f = stat_fields(p);
        // cutime and cstime are fields 16 and 17 of proc(5).
        let waited = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        sum.cpu_ticks += s.cpu_ticks + waited(13) + waited(14);
        sum.rss_kib += s.rss_kib;
        sum.hwm_kib += s.hwm_kib;
    }
    sum
}
