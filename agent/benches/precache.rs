//! Pre-caching benchmark (issue 4 §6): TALM's way against `talm-agent precache run`, side by
//! side in one run, on the same local `docker-registry` and the same synthetic image set (a
//! release of N images sharing three base layers, an FBC index with two operators, two extra
//! images; built by `tests/precache_support`).
//!
//! - **Baseline (TALM's `precache.sh`):** `podman pull` of the release image and of the index
//!   (as `release.sh`/`olm.sh` do), then `pull.sh`: for each image, `podman image exists`, else
//!   `podman pull -q --tls-verify=false` in the background, in waves of 10 (`MAX_PULL_THREADS`),
//!   then every failed image retried sequentially up to 10 times. Storage: a temporary overlay
//!   `--root/--runroot`. The list itself is given (no mount, jq or `opm render`), which favours
//!   the baseline.
//! - **talm:** `talm-agent precache run --spec … --state-dir … --host-root …` (this crate's
//!   binary), importing into containers-storage (overlay) under the temporary host root, whose
//!   `registries.conf` marks the registry insecure (plain HTTP).
//!
//! Measured: wall time (talm / baseline), the CPU time of each side's whole process tree
//! (`cutime` + `cstime` of the benchmark process across the run: every waited-for descendant,
//! which the machine's other load does not inflate the way it inflates wall time), bytes served by the registry (from its log) against
//! the unique blob bytes, re-fetched bytes after a SIGKILL at ~50% of the fetch and a resume,
//! the achieved rate under `--bandwidth-limit` (over the registry's transfer window), and the
//! memory of the **whole process tree**: every 20 ms the sampler lists the agent and all its
//! descendants (the skopeo children of the import; `ionice`/`nice` exec into skopeo) from
//! `/proc/*/stat`, sums their `VmRSS` (and, for reference, their `Pss` from `smaps_rollup`,
//! which counts pages shared between the skopeo processes once), and keeps the peak of each
//! sum. The baseline's tree is every `podman` process the benchmark runs, sampled the same way.
//!
//! Talm variants, side by side in one run (each into a fresh storage and cache, fetching from
//! the same registry): `talm` (this build, default import settings), `talm --import-parallel N`
//! for the other N of 1, 2 and 4 (this build: what the parallelism choice alone is worth), and, with
//! `--agent-before PATH`, a binary of the previous import (one `skopeo copy` per image, up to
//! four at once, an import slot held inside the fetch slot).
//!
//! ```sh
//! cargo bench -p talm-agent --bench precache -- [--set small|large] [--images 60]
//!     [--base-mib 24,8,2] [--unique-kib 512] [--parallel 10] [--cap-mib 16] [--dir /var/tmp]
//!     [--agent target/release/talm-agent] [--agent-before PATH] [--baseline-only]
//!     [--skip-extras]
//! ```
//! `--set large`: 160 release components with [`LayerSizes::RELEASE`] (about 2.4 GiB of unique
//! blobs; implies `--skip-extras`, which leaves out the fetch-only, resume and cap runs).
//! Needs root, docker-registry, skopeo, umoci and podman.
// The benchmark spawns the registry, podman and the agent: process spawning is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::disallowed_methods
)]

#[path = "../tests/precache_support/mod.rs"]
mod precache_support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use precache_support::{BlobRequest, Fixture, LayerSizes, Registry, build_fixture_with};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const MIB: f64 = 1048576.0;

#[derive(Debug)]
struct Opts {
    images: usize,
    base: [usize; 3],
    unique: usize,
    release_like: bool,
    parallel: usize,
    cap: u64,
    dir: PathBuf,
    agent: Option<PathBuf>,
    agent_before: Option<PathBuf>,
    skip_extras: bool,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        images: 60,
        base: [24 << 20, 8 << 20, 2 << 20],
        unique: 512 << 10,
        parallel: 10,
        cap: 16 << 20,
        release_like: false,
        dir: PathBuf::from("/var/tmp"),
        agent: option_env!("CARGO_BIN_EXE_talm-agent").map(PathBuf::from),
        agent_before: None,
        skip_extras: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = || args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--images" => o.images = val().parse().expect("--images N"),
            "--base-mib" => {
                let v: Vec<usize> = val()
                    .split(',')
                    .map(|s| s.parse::<usize>().expect("--base-mib A,B,C") << 20)
                    .collect();
                o.base = [v[0], v[1], v[2]];
            }
            "--unique-kib" => o.unique = val().parse::<usize>().expect("--unique-kib N") << 10,
            "--parallel" => o.parallel = val().parse().expect("--parallel N"),
            "--cap-mib" => o.cap = val().parse::<u64>().expect("--cap-mib N") << 20,
            "--dir" => o.dir = PathBuf::from(val()),
            "--agent" => o.agent = Some(PathBuf::from(val())),
            "--agent-before" => o.agent_before = Some(PathBuf::from(val())),
            "--set" => match val().as_str() {
                "small" => {}
                "large" => {
                    o.images = 160;
                    o.base = LayerSizes::RELEASE.base;
                    o.unique = LayerSizes::RELEASE.unique;
                    o.release_like = true;
                    o.skip_extras = true;
                }
                other => panic!("--set {other:?}: expected small or large"),
            },
            "--skip-extras" => {
                o.skip_extras = true;
                i += 1;
                continue;
            }
            "--baseline-only" => {
                o.agent = None;
                i += 1;
                continue;
            }
            // `cargo bench` passes --bench.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        == 0
}

/// A podman command on a private storage (TALM's tool, as in `common.sh`).
fn podman(reg: &Registry, root: &Path) -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_REGISTRIES_CONF", &reg.registries_conf)
        .arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args([
            "--storage-driver",
            "overlay",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
        ]);
    c
}

fn podman_pull(reg: &Registry, root: &Path, image: &str) -> Command {
    let mut c = podman(reg, root);
    c.args(["pull", "-q", "--tls-verify=false"])
        .arg(format!("--authfile={}", reg.auth_file.display()))
        .arg(image)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// TALM's `release.sh`/`olm.sh` pulls and `pull.sh` (`mirror_images` in waves of 10, then
/// `retry_images`). Returns the images that still failed.
fn baseline(reg: &Registry, root: &Path, top: &[String], list: &[String]) -> Vec<String> {
    for img in top {
        let ok = podman_pull(reg, root, img).status().unwrap().success();
        assert!(ok, "baseline: podman pull {img} failed");
    }
    let mut failed = Vec::new();
    let mut wave: Vec<(String, std::process::Child)> = Vec::new();
    let wait_wave = |wave: &mut Vec<(String, std::process::Child)>, failed: &mut Vec<String>| {
        for (img, mut ch) in wave.drain(..) {
            if !ch.wait().unwrap().success() {
                failed.push(img);
            }
        }
    };
    for img in list {
        let exists = podman(reg, root)
            .args(["image", "exists", img])
            .status()
            .unwrap()
            .success();
        if exists {
            continue;
        }
        wave.push((img.clone(), podman_pull(reg, root, img).spawn().unwrap()));
        if wave.len() >= 10 {
            wait_wave(&mut wave, &mut failed);
        }
    }
    wait_wave(&mut wave, &mut failed);
    let mut still = Vec::new();
    for img in failed {
        let ok = (0..10).any(|_| podman_pull(reg, root, &img).status().unwrap().success());
        if !ok {
            still.push(img);
        }
    }
    still
}

/// Images in an overlay containers-storage, from its own metadata (`overlay-images/images.json`;
/// podman refuses run roots longer than 50 characters, so it is not asked).
fn storage_image_count(graph: &Path) -> usize {
    let p = graph.join("overlay-images/images.json");
    let Ok(text) = std::fs::read(&p) else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
    v.as_array().map_or(0, Vec::len)
}

/// A node for the agent: `registries.conf` marking the registry insecure, empty storage.
fn host_root(reg: &Registry, dir: &Path) -> PathBuf {
    let h = dir.join("host");
    std::fs::create_dir_all(h.join("etc/containers")).unwrap();
    std::fs::create_dir_all(h.join("var/lib/containers/storage")).unwrap();
    std::fs::create_dir_all(h.join("run/containers/storage")).unwrap();
    std::fs::write(
        h.join("etc/containers/registries.conf"),
        format!(
            "unqualified-search-registries = []\n\n[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
            reg.host
        ),
    )
    .unwrap();
    h
}

fn write_spec(dir: &Path, fx: &Fixture, channels: &[String]) -> PathBuf {
    let spec = serde_json::json!({
        "platformImage": fx.release,
        "operatorsIndexes": [fx.index],
        "operatorsPackagesAndChannels": channels,
        "additionalImages": fx.additional,
        "excludePrecachePatterns": [],
    });
    let p = dir.join("spec.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    p
}

fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    for e in rd.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            total += dir_bytes(&e.path());
        } else if m.is_file() {
            total += m.len();
        }
    }
    total
}

/// pid → (parent pid, command name), from `/proc/*/stat`.
fn processes() -> HashMap<u32, (u32, String)> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …"; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        out.insert(pid, (ppid, comm));
    }
    out
}

/// CPU seconds (user + system) of this process's children that have been waited for, and of
/// their own waited-for descendants (`cutime` + `cstime` of `/proc/self/stat`): the difference
/// across a run is the CPU time of the whole tree it started.
fn children_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    // After the comm: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    (ticks(13) + ticks(14)) / 100.0
}

/// `roots` and all their descendants.
fn tree(procs: &HashMap<u32, (u32, String)>, roots: Vec<u32>) -> Vec<u32> {
    let mut members = roots;
    let mut i = 0;
    while i < members.len() {
        let parent = members[i];
        members.extend(
            procs
                .iter()
                .filter(|(_, (pp, _))| *pp == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    members
}

/// A `kB` field of `/proc/<pid>/<file>` (`VmRSS:` in `status`, `Pss:` in `smaps_rollup`).
fn proc_kib(pid: u32, file: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Peak memory of a process tree.
#[derive(Debug, Default, Clone, Copy)]
struct TreeMem {
    /// Peak of the sum of `VmRSS` over the tree.
    rss_kib: u64,
    /// Peak of the sum of `Pss` over the tree.
    pss_kib: u64,
    /// Most processes in the tree at once.
    procs: usize,
    /// The root's own peak (`VmHWM`), when the tree has one root.
    root_hwm_kib: u64,
}

impl TreeMem {
    fn max(self, o: TreeMem) -> TreeMem {
        TreeMem {
            rss_kib: self.rss_kib.max(o.rss_kib),
            pss_kib: self.pss_kib.max(o.pss_kib),
            procs: self.procs.max(o.procs),
            root_hwm_kib: self.root_hwm_kib.max(o.root_hwm_kib),
        }
    }
}

/// Which tree to sample.
#[derive(Clone, Copy, Debug)]
enum Root {
    /// This process and its descendants.
    Pid(u32),
    /// Every process named `podman` that this benchmark started, and their descendants.
    Podmans,
}

/// Samples a process tree every 20 ms on a thread until [`Sampler::stop`].
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<TreeMem>,
}

impl Sampler {
    fn start(root: Root) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let me = std::process::id();
        let thread = std::thread::spawn(move || {
            let mut peak = TreeMem::default();
            while !s2.load(Ordering::Relaxed) {
                let procs = processes();
                let roots = match root {
                    Root::Pid(p) => vec![p],
                    Root::Podmans => procs
                        .iter()
                        .filter(|(_, (pp, comm))| *pp == me && comm == "podman")
                        .map(|(pid, _)| *pid)
                        .collect(),
                };
                let members = tree(&procs, roots);
                let mut now = TreeMem {
                    procs: members.len(),
                    ..TreeMem::default()
                };
                for pid in &members {
                    now.rss_kib += proc_kib(*pid, "status", "VmRSS:").unwrap_or(0);
                    now.pss_kib += proc_kib(*pid, "smaps_rollup", "Pss:").unwrap_or(0);
                }
                if let Root::Pid(p) = root {
                    now.root_hwm_kib = proc_kib(p, "status", "VmHWM:").unwrap_or(0);
                }
                peak = peak.max(now);
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        Sampler { stop, thread }
    }

    fn stop(self) -> TreeMem {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

struct AgentRun {
    ok: bool,
    /// CPU seconds of the agent and every process under it.
    cpu_s: f64,
    killed: bool,
    wall: Duration,
    mem: TreeMem,
    cache_bytes_at_kill: u64,
    log: PathBuf,
}

/// What every agent run shares.
struct Agent<'a> {
    bin: &'a Path,
    spec: &'a Path,
    parallel: usize,
    /// Extra flags (the import settings of a variant).
    extra: Vec<String>,
}

/// Runs `talm-agent precache run`, sampling its process tree's memory; kills it (SIGKILL) once
/// the cache under the state dir holds `kill_at` bytes.
fn agent(
    a: &Agent<'_>,
    state: &Path,
    host: &Path,
    cap: u64,
    import: bool,
    kill_at: Option<u64>,
) -> AgentRun {
    let log = state.with_extension("log");
    let out = std::fs::File::create(&log).unwrap();
    let mut c = Command::new(a.bin);
    c.args(["precache", "run", "--spec"])
        .arg(a.spec)
        .arg("--state-dir")
        .arg(state)
        .arg("--host-root")
        .arg(host)
        .arg(format!("--parallel={}", a.parallel))
        .arg(format!("--bandwidth-limit={cap}"))
        .arg("--storage-driver=overlay")
        .args(&a.extra)
        .env("TALM_LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    if !import {
        c.arg("--no-import");
    }
    let start = Instant::now();
    let cpu0 = children_cpu_s();
    let mut ch = c.spawn().unwrap();
    let sampler = Sampler::start(Root::Pid(ch.id()));
    let mut killed = false;
    let mut cache_bytes_at_kill = 0;
    let status = loop {
        if let Some(st) = ch.try_wait().unwrap() {
            break st;
        }
        if let Some(limit) = kill_at
            && !killed
            && dir_bytes(state) >= limit
        {
            ch.kill().unwrap();
            killed = true;
            let st = ch.wait().unwrap();
            cache_bytes_at_kill = dir_bytes(state);
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = start.elapsed();
    AgentRun {
        ok: status.success(),
        cpu_s: children_cpu_s() - cpu0,
        killed,
        wall,
        mem: sampler.stop(),
        cache_bytes_at_kill,
        log,
    }
}

/// Unmounts what containers-storage left mounted under `dir` (the overlay driver bind-mounts its
/// `overlay` directory onto itself), deepest first, so the temp dir can be removed.
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for m in points {
        let _ = Command::new("umount").arg(m).status();
    }
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The registry's transfer window of `reqs`: (bytes, seconds from the first request's start to
/// the last one's end).
fn transfer_window(reqs: &[BlobRequest]) -> (u64, f64) {
    let mut first = f64::MAX;
    let mut last = f64::MIN;
    let mut bytes = 0;
    for r in reqs {
        let end: jiff::Timestamp = r.end.parse().expect("registry log time");
        let end_s = end.as_nanosecond() as f64 / 1e9;
        first = first.min(end_s - r.duration_s);
        last = last.max(end_s);
        bytes += r.written;
    }
    (bytes, (last - first).max(1e-9))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB)
}

fn main() {
    let o = parse_args();
    assert!(
        is_root(),
        "the pre-cache benchmark needs root (podman/containers-storage)"
    );
    precache_support::require_tools(&["docker-registry", "skopeo", "umoci", "podman"]);
    let work = tempfile::Builder::new()
        .prefix("talm-bench-precache-")
        .tempdir_in(&o.dir)
        .unwrap();
    let reg = Registry::start_plain();
    let t = Instant::now();
    let sizes = LayerSizes {
        base: o.base,
        unique: o.unique,
        seed: 0x7a1f,
        release_like: o.release_like,
    };
    let fx = build_fixture_with(&reg, o.images, None, sizes);
    println!(
        "fixture: {} release images + release + index + 2 operators (2 channel heads) + {} extra, built and pushed in {:.1}s",
        fx.release_images.len(),
        fx.additional.len(),
        t.elapsed().as_secs_f64()
    );
    let channels: Vec<String> = fx
        .default_channels
        .iter()
        .map(|(p, c)| format!("{p}:{c}"))
        .collect();
    let top = vec![fx.release.clone(), fx.index.clone()];
    let mut list: Vec<String> = fx.release_images.iter().map(|(_, s)| s.clone()).collect();
    for (pc, imgs) in &fx.catalog {
        if fx.default_channels.contains(pc) {
            list.extend(imgs.iter().cloned());
        }
    }
    list.extend(fx.additional.iter().cloned());
    list.sort();
    list.dedup();
    let mut everything = top.clone();
    everything.extend(list.iter().cloned());
    let unique = fx.unique_bytes(&everything);
    println!(
        "image set: {} images + release + index; unique blob bytes {} ({} bytes)",
        list.len(),
        mib(unique),
        unique
    );

    // --- baseline: TALM's podman waves
    let broot = work.path().join("baseline");
    let s0 = reg.served_blob_bytes();
    let t = Instant::now();
    let sampler = Sampler::start(Root::Podmans);
    let cpu0 = children_cpu_s();
    let still_failed = baseline(&reg, &broot, &top, &list);
    let b_wall = t.elapsed();
    let b_cpu = children_cpu_s() - cpu0;
    let b_mem = sampler.stop();
    let b_bytes = reg.served_blob_bytes() - s0;
    let b_images = storage_image_count(&broot.join("storage"));
    println!(
        "baseline (podman pull, waves of 10, retries): wall {:.2}s, CPU {b_cpu:.2}s, registry served {} = {:.2}× unique, {} images in storage, {} failed, podman tree peak: sum VmRSS {:.1} MiB, sum Pss {:.1} MiB, {} processes",
        b_wall.as_secs_f64(),
        mib(b_bytes),
        b_bytes as f64 / unique as f64,
        b_images,
        still_failed.len(),
        b_mem.rss_kib as f64 / 1024.0,
        b_mem.pss_kib as f64 / 1024.0,
        b_mem.procs
    );
    unmount_under(&broot);
    let _ = std::fs::remove_dir_all(&broot);

    let Some(bin) = o.agent.clone() else {
        println!("talm side skipped: no talm-agent binary (--agent PATH)");
        unmount_under(work.path());
        return;
    };

    // --- talm variants: full runs with import, each into a fresh cache and storage
    let tdir = work.path().join("talm");
    std::fs::create_dir_all(&tdir).unwrap();
    let spec = write_spec(&tdir, &fx, &channels);
    let mut variants: Vec<(String, Agent<'_>)> = Vec::new();
    if let Some(before) = &o.agent_before {
        variants.push((
            "talm before (previous import, --agent-before)".into(),
            Agent {
                bin: before,
                spec: &spec,
                parallel: o.parallel,
                extra: Vec::new(),
            },
        ));
    }
    variants.push((
        format!(
            "talm (default: --import-parallel {})",
            talm_agent::precache::IMPORT_PARALLEL
        ),
        Agent {
            bin: &bin,
            spec: &spec,
            parallel: o.parallel,
            extra: Vec::new(),
        },
    ));
    for n in [1, 2, 4] {
        if n == talm_agent::precache::IMPORT_PARALLEL {
            continue;
        }
        variants.push((
            format!("talm --import-parallel {n}"),
            Agent {
                bin: &bin,
                spec: &spec,
                parallel: o.parallel,
                extra: vec![format!("--import-parallel={n}")],
            },
        ));
    }
    let mut peak = TreeMem::default();
    for (n, (label, ag)) in variants.iter().enumerate() {
        let vdir = tdir.join(format!("v{n}"));
        std::fs::create_dir_all(&vdir).unwrap();
        let host = host_root(&reg, &vdir);
        let s0 = reg.served_blob_bytes();
        let r = agent(ag, &vdir.join("state"), &host, 0, true, None);
        let t_bytes = reg.served_blob_bytes() - s0;
        if !r.ok {
            println!("{label} FAILED; log tail:\n{}", tail(&r.log));
        }
        let t_images = storage_image_count(&host.join("var/lib/containers/storage"));
        println!(
            "{label}: wall {:.2}s = {:.2}× baseline, CPU {:.2}s = {:.2}× baseline, registry served {} = {:.3}× unique, {} images in storage, tree peak: sum VmRSS {:.1} MiB, sum Pss {:.1} MiB, {} processes; agent alone VmHWM {:.1} MiB; exit ok: {}",
            r.wall.as_secs_f64(),
            r.wall.as_secs_f64() / b_wall.as_secs_f64(),
            r.cpu_s,
            r.cpu_s / b_cpu.max(0.01),
            mib(t_bytes),
            t_bytes as f64 / unique as f64,
            t_images,
            r.mem.rss_kib as f64 / 1024.0,
            r.mem.pss_kib as f64 / 1024.0,
            r.mem.procs,
            r.mem.root_hwm_kib as f64 / 1024.0,
            r.ok
        );
        if ag.extra.is_empty() && ag.bin == bin.as_path() {
            peak = peak.max(r.mem);
        }
        unmount_under(&vdir);
        let _ = std::fs::remove_dir_all(&vdir);
    }
    let ag = variants
        .swap_remove(if o.agent_before.is_some() { 1 } else { 0 })
        .1;
    if o.skip_extras {
        println!("fetch-only, resume and cap runs skipped (--skip-extras)");
        unmount_under(work.path());
        return;
    }

    // --- talm: fetch only (no import), uncapped
    let fdir = work.path().join("fetch");
    std::fs::create_dir_all(&fdir).unwrap();
    let host = host_root(&reg, &fdir);
    let s0 = reg.served_blob_bytes();
    let f = agent(&ag, &fdir.join("state"), &host, 0, false, None);
    let f_bytes = reg.served_blob_bytes() - s0;
    peak = peak.max(f.mem);
    println!(
        "talm fetch only (--no-import): wall {:.2}s, served {} = {:.3}× unique, ok: {}",
        f.wall.as_secs_f64(),
        mib(f_bytes),
        f_bytes as f64 / unique as f64,
        f.ok
    );

    // --- resume: SIGKILL at ~50% of the fetch (capped so the kill lands mid-transfer), resume
    let rdir = work.path().join("resume");
    std::fs::create_dir_all(&rdir).unwrap();
    let host = host_root(&reg, &rdir);
    let state = rdir.join("state");
    let s0 = reg.served_blob_bytes();
    let k = agent(&ag, &state, &host, o.cap * 2, false, Some(unique / 2));
    let served_1 = reg.served_blob_bytes() - s0;
    let s1 = reg.served_blob_bytes();
    let r2 = agent(&ag, &state, &host, 0, false, None);
    let served_2 = reg.served_blob_bytes() - s1;
    peak = peak.max(k.mem).max(r2.mem);
    let refetched = (served_1 + served_2).saturating_sub(unique);
    println!(
        "resume: killed: {} with {} in the cache ({:.0}% of unique); served before the kill {}, after {}; re-fetched {} bytes = {:.3}% of the bytes finished (target < 1%); resumed run ok: {}",
        k.killed,
        mib(k.cache_bytes_at_kill),
        k.cache_bytes_at_kill as f64 * 100.0 / unique as f64,
        mib(served_1),
        mib(served_2),
        refetched,
        refetched as f64 * 100.0 / k.cache_bytes_at_kill.max(1) as f64,
        r2.ok
    );
    if !r2.ok {
        println!("resumed run log tail:\n{}", tail(&r2.log));
    }

    // --- bandwidth cap
    let cdir = work.path().join("cap");
    std::fs::create_dir_all(&cdir).unwrap();
    let host = host_root(&reg, &cdir);
    let n0 = reg.blob_requests().len();
    let c = agent(&ag, &cdir.join("state"), &host, o.cap, false, None);
    let _ = reg.served_blob_bytes();
    let reqs = reg.blob_requests();
    let (c_bytes, window) = transfer_window(&reqs[n0..]);
    peak = peak.max(c.mem);
    let rate = c_bytes as f64 / window;
    println!(
        "cap {}/s: achieved {:.2} MiB/s over the registry's transfer window ({:.2}s, {}) = {:+.1}% (target ±5%); {:.2} MiB/s over the whole run ({:.2}s); ok: {}",
        mib(o.cap),
        rate / MIB,
        window,
        mib(c_bytes),
        (rate / o.cap as f64 - 1.0) * 100.0,
        c_bytes as f64 / MIB / c.wall.as_secs_f64(),
        c.wall.as_secs_f64(),
        c.ok
    );
    println!(
        "talm (default settings) over all its runs: tree peak sum VmRSS {:.1} MiB (target < 64 MiB), sum Pss {:.1} MiB; agent alone VmHWM {:.1} MiB",
        peak.rss_kib as f64 / 1024.0,
        peak.pss_kib as f64 / 1024.0,
        peak.root_hwm_kib as f64 / 1024.0
    );
    unmount_under(work.path());
}
