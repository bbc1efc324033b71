//! Backup benchmark: `backup::run` (real etcd on 127.0.0.1, ostree answered by a recording
//! runner) against `tar czf` of the same directories, side by side in one run, on a generated
//! host tree (many small files plus a large etcd-db-like file), at several sizes; the backup
//! runs in a child process so its peak RSS (VmHWM) is its own.
//!
//! ```sh
//! cargo bench -p talm-agent --bench backup -- [--sizes 256,2048] [--dir /var/tmp/talm-bench]
//!     [--compressions zstd,gzip,none]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use talm_agent::backup::{self, BackupConfig, EtcdAccess, Host, Progress, Step};
use talm_agent::host::archive::Compression;
use talm_agent::host::disk::RealDisk;
use talm_agent::host::exec::{Cmd, CommandRunner, Output, RealRunner, RecordingRunner};
use talm_agent::host::root::HostRoot;

const MIB: u64 = 1 << 20;

struct Quiet;
impl Progress for Quiet {
    fn step(&self, _: Step) {}
    fn warn(&self, _: &str) {}
}

/// xorshift bytes; `text` makes them compressible like configuration files.
struct Gen(u64);
impl Gen {
    fn fill(&mut self, buf: &mut [u8], compressible: bool) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let b = self.0.to_le_bytes();
            for (i, c) in chunk.iter_mut().enumerate() {
                *c = if compressible {
                    b"abcdefgh: 0123\n"[(b[i] % 15) as usize]
                } else {
                    b[i]
                };
            }
        }
    }
}

/// A host tree of about `size` bytes: 55% a single etcd-db-like file (4 KiB pages: half filled
/// with random bytes, a quarter zero pages), the rest small files (1-64 KiB, half text-like,
/// half random) spread over /etc, /usr/local and /var/lib/kubelet.
fn generate(root: &Path, size: u64) -> u64 {
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let db_size = size * 55 / 100;
    let db = root.join("var/lib/kubelet/etcd-like/member/snap/db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&db).unwrap());
    let mut page = vec![0u8; 4096];
    for i in 0..db_size / 4096 {
        page.fill(0);
        if i % 4 != 0 {
            g.fill(&mut page[..2048], false);
        }
        f.write_all(&page).unwrap();
    }
    drop(f);
    let mut written = db_size;
    let dirs = ["etc", "usr/local", "var/lib/kubelet/pods"];
    let mut n = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while written < size {
        let len = 1024 + (g.0 % (63 * 1024)) as usize;
        let dir = root
            .join(dirs[(n % 3) as usize])
            .join(format!("d{:03}", n / 300 % 1000));
        if n % 300 < 3 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        g.fill(&mut buf[..len], n.is_multiple_of(2));
        std::fs::write(dir.join(format!("f{n}.conf")), &buf[..len]).unwrap();
        written += len as u64;
        n += 1;
    }
    std::fs::create_dir_all(root.join("var/recovery")).unwrap();
    n + 1
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The child: one backup, then `elapsed_ms bytes peak_rss_kib` on stdout.
fn child(root: &Path, endpoint: &str, compression: &str) {
    let runner = RecordingRunner::new();
    runner.on_prefix(
        "ostree admin status",
        Output::ok("* rhcos a.0\n    Pinned: yes\n"),
    );
    let cfg = BackupConfig {
        host: Host {
            root: HostRoot::new(root),
            runner: Arc::new(runner),
            disk: Arc::new(RealDisk),
        },
        dir: PathBuf::from("/var/recovery"),
        margin: 0,
        etcd: EtcdAccess {
            endpoints: vec![endpoint.to_owned()],
            ca: None,
            cert: None,
            key: None,
        },
        compression: match compression {
            "gzip" => Compression::Gzip(6),
            "none" => Compression::None,
            _ => Compression::Zstd3,
        },
        deadline: None,
        timestamp: "bench".into(),
    };
    let t = Instant::now();
    let report = backup::run(&cfg, &Quiet).unwrap();
    println!(
        "{} {} {}",
        t.elapsed().as_millis(),
        report.bytes,
        peak_rss_kib()
    );
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(root) = arg(&args, "--child") {
        child(
            Path::new(&root),
            &arg(&args, "--endpoint").unwrap(),
            &arg(&args, "--compression").unwrap(),
        );
        return;
    }
    let sizes: Vec<u64> = arg(&args, "--sizes")
        .unwrap_or_else(|| "256,2048".into())
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let compressions: Vec<String> = arg(&args, "--compressions")
        .unwrap_or_else(|| "zstd".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let base = PathBuf::from(arg(&args, "--dir").unwrap_or_else(|| "/var/tmp/talm-bench".into()));
    let r = RealRunner::new();
    for tool in ["etcd", "tar"] {
        if !r.available(tool) {
            println!("SKIP: `{tool}` is not installed");
            return;
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();

    // A small live etcd: the snapshot path is the same whatever the size.
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (cp, pp) = (port(()), port(()));
    let client = format!("http://127.0.0.1:{cp}");
    let peer = format!("http://127.0.0.1:{pp}");
    let _etcd = r
        .spawn_background(
            &Cmd::new("etcd")
                .args(["--name", "b", "--data-dir"])
                .arg(base.join("etcd"))
                .args([
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                ])
                .args([
                    "--initial-cluster",
                    &format!("b={peer}"),
                    "--log-level",
                    "error",
                ])
                .timeout(None),
            &base.join("etcd.log"),
        )
        .unwrap();
    let ctl = |a: &[&str]| {
        r.run(
            &Cmd::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &client])
                .args(a.iter().copied()),
        )
    };
    let t0 = Instant::now();
    while ctl(&["put", "/registry/bench", "x"]).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "etcd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let exe = std::env::current_exe().unwrap();

    println!(
        "| tree | files | talm compression | talm backup | talm output | talm peak RSS | tar czf | tar.gz output | talm / tar |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for size in sizes {
        let root = base.join(format!("host-{size}"));
        let files = generate(&root, size * MIB);
        // Warm the page cache the same way for both tools (one read of everything).
        r.run(
            &Cmd::new("tar")
                .args(["cf", "-", "-C"])
                .arg(&root)
                .args(["etc", "usr/local", "var/lib/kubelet"])
                .timeout(None),
        )
        .ok();
        for comp in &compressions {
            let out = r
                .run(
                    &Cmd::new(exe.display().to_string())
                        .arg("--child")
                        .arg(&root)
                        .args(["--endpoint", &client, "--compression", comp])
                        .timeout(None),
                )
                .unwrap();
            let text = out.stdout_text();
            let v: Vec<u64> = text
                .split_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect();
            let (ms, bytes, rss) = (v[0], v[1], v[2]);
            let tgz = base.join("out.tgz");
            let t = Instant::now();
            r.run(
                &Cmd::new("tar")
                    .arg("czf")
                    .arg(&tgz)
                    .arg("-C")
                    .arg(&root)
                    .args(["etc", "usr/local", "var/lib/kubelet"])
                    .timeout(None),
            )
            .unwrap();
            let tar_ms = t.elapsed().as_millis() as u64;
            let tgz_size = std::fs::metadata(&tgz).unwrap().len();
            std::fs::remove_file(&tgz).unwrap();
            println!(
                "| {size} MiB | {files} | {comp} | {:.2} s | {} MiB | {:.1} MiB | {:.2} s | {} MiB | {:.2}× |",
                ms as f64 / 1000.0,
                bytes / MIB,
                rss as f64 / 1024.0,
                tar_ms as f64 / 1000.0,
                tgz_size / MIB,
                ms as f64 / tar_ms as f64
            );
            let _ = std::fs::remove_dir_all(root.join("var/recovery/backup"));
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
    let _ = std::fs::remove_dir_all(&base);
}
