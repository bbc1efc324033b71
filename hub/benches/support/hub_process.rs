//! Running `talm-hub run` as a child process against the in-process Kubernetes API double, for
//! the hub's benchmarks (`operator`, `precache_budget`): a free loopback port, a kubeconfig
//! that points at the double, a plain HTTP GET of the admin port (`/readyz`, `/metrics`),
//! stopping the process as SIGTERM would, and the load average to print beside the figures.

// Each benchmark uses a subset of these helpers; the rest is dead code in that benchmark.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A free port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// A kubeconfig at `path` for the API server at `url` (plain HTTP, no credentials).
pub fn write_kubeconfig(path: &Path, url: &str) -> anyhow::Result<()> {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster: {{server: \"{url}\"}}\n\
             contexts:\n- name: double\n  context: {{cluster: double, user: u, namespace: default}}\n\
             current-context: double\nusers:\n- name: u\n  user: {{}}\n"
        ),
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// `GET path` on `addr` over plain HTTP/1.1: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// SIGTERM, then SIGKILL after 30 s.
pub async fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `load average A B C` from /proc/loadavg (empty when unreadable).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| {
            format!(
                "load average {}",
                s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
            )
        })
        .unwrap_or_default()
}
