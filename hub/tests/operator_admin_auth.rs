//! `talm-hub run`, the binary, against the in-process API double: the admin endpoints that
//! expose fleet data (`/metrics`, `/agents`) answer only to a bearer token that a TokenReview
//! authenticates and a SubjectAccessReview allows (the double answers both from the script
//! each test sets); the probes stay open; `--admin-auth none` (here through `TALM_ADMIN_AUTH`)
//! opens everything.

// Test helpers may unwrap: a panic there is a test failure with a backtrace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use talm_kube_double::{Fault, KubeDouble, Verb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(60);
/// What the Prometheus ServiceAccount would authenticate as.
const PROMETHEUS: &str = "system:serviceaccount:openshift-monitoring:prometheus-k8s";

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// One HTTP answer: status, raw header block, body.
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Option<Answer> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    Some(Answer {
        status: head.split_whitespace().nth(1)?.parse().ok()?,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    })
}

async fn status(addr: SocketAddr, path: &str, token: Option<&str>) -> u16 {
    get(addr, path, token).await.map(|a| a.status).unwrap_or(0)
}

fn kubeconfig(double: &KubeDouble, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster: {{server: \"{}\"}}\n\
             contexts:\n- name: double\n  context: {{cluster: double, user: u, namespace: default}}\n\
             current-context: double\nusers:\n- name: u\n  user: {{}}\n",
            double.url()
        ),
    )
    .unwrap();
    path
}

/// `talm-hub run` on the double with one admin port for everything; `env` adds variables.
#[allow(clippy::disallowed_methods)] // tests run the binary under test
fn spawn_hub(kubeconfig: &std::path::Path, admin: SocketAddr, env: &[(&str, &str)]) -> Child {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_talm-hub"));
    cmd.args([
        "run",
        "--grpc-addr",
        &free_port().to_string(),
        "--namespace",
        "default",
        "--health-addr",
        &admin.to_string(),
        "--metrics-addr",
        &admin.to_string(),
        "--leader-elect",
        "false",
        "--ztp",
        "false",
        "--identity",
        "auth-replica",
    ])
    .env_clear()
    .env("KUBECONFIG", kubeconfig)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Waits for `/readyz` (open in every mode).
async fn wait_ready(child: &mut Child, admin: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while status(admin, "/readyz", None).await != 200 {
        assert!(child.try_wait().unwrap().is_none(), "talm-hub exited early");
        assert!(Instant::now() < deadline, "talm-hub never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ends the child and returns its stderr.
#[allow(clippy::disallowed_methods)] // signals the binary under test
fn stop(mut child: Child) -> String {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM");
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status:?}; stderr:\n{stderr}");
    stderr
}

fn reviews(double: &KubeDouble, resource: &str) -> usize {
    double.count_requests(|r| r.verb == Verb::Create && r.resource == resource)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_endpoints_need_an_authenticated_and_authorized_token() {
    let double = KubeDouble::start().await.unwrap();
    double.accept_token("prom-token", PROMETHEUS, &["system:serviceaccounts"]);
    double.accept_token("nobody-token", "nobody", &["system:authenticated"]);
    double.accept_token("fresh-token", "fresh", &[]);
    double.accept_token("agents-token", "agent-reader", &[]);
    for path in ["/metrics", "/agents", "/agents/*"] {
        double.grant_non_resource(PROMETHEUS, "get", path);
    }
    double.grant_non_resource("fresh", "get", "/metrics");
    double.grant_non_resource("agent-reader", "get", "/agents");
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let mut child = spawn_hub(&kubeconfig(&double, dir.path()), admin, &[]);
    wait_ready(&mut child, admin).await;

    // The probes are open.
    assert_eq!(status(admin, "/healthz", None).await, 200);
    assert_eq!(status(admin, "/readyz", None).await, 200);
    for path in ["/metrics", "/agents", "/agents/sno1"] {
        // No token, a malformed header's worth of nothing, an unknown token: 401 + challenge.
        for token in [None, Some("not-a-token")] {
            let a = get(admin, path, token).await.unwrap();
            assert_eq!(a.status, 401, "{path} with {token:?}");
            assert!(
                a.headers.contains("www-authenticate: bearer"),
                "{path}: {}",
                a.headers
            );
        }
        // Authenticated, no grant: 403 naming the user and path.
        let a = get(admin, path, Some("nobody-token")).await.unwrap();
        assert_eq!(a.status, 403, "{path}");
        assert!(
            a.body.contains("user=nobody") && a.body.contains(path),
            "{}",
            a.body
        );
    }
    // Authorized per path: the reader of /agents may not read /metrics or one agent.
    assert_eq!(status(admin, "/agents", Some("agents-token")).await, 200);
    assert_eq!(status(admin, "/metrics", Some("agents-token")).await, 403);
    assert_eq!(
        status(admin, "/agents/sno1", Some("agents-token")).await,
        403
    );
    // Allowed: the real answers.
    let m = get(admin, "/metrics", Some("prom-token")).await.unwrap();
    assert_eq!(m.status, 200);
    assert!(
        m.body.contains("talm_reconcile_runs_total") && m.body.contains("# EOF"),
        "{}",
        m.body
    );
    assert_eq!(status(admin, "/agents", Some("prom-token")).await, 200);
    assert_eq!(status(admin, "/agents/sno1", Some("prom-token")).await, 404);

    // The cache: within the TTL (10 s) a second scrape makes no second review, and a
    // known user on another path needs only the access review.
    double.clear_requests();
    for _ in 0..2 {
        assert_eq!(status(admin, "/metrics", Some("fresh-token")).await, 200);
    }
    assert_eq!(reviews(&double, "tokenreviews"), 1);
    assert_eq!(reviews(&double, "subjectaccessreviews"), 1);
    assert_eq!(status(admin, "/agents", Some("fresh-token")).await, 403);
    assert_eq!(reviews(&double, "tokenreviews"), 1, "user cached");
    assert_eq!(reviews(&double, "subjectaccessreviews"), 2);
    // Negative answers are cached too.
    double.clear_requests();
    for _ in 0..3 {
        assert_eq!(
            status(admin, "/metrics", Some("still-not-a-token")).await,
            401
        );
    }
    assert_eq!(reviews(&double, "tokenreviews"), 1);

    // The API failing: 503, never allowed, and not cached (the next try succeeds).
    double.accept_token("late-token", PROMETHEUS, &[]);
    double.inject(Fault::error(500).resource("tokenreviews").times(1));
    let a = get(admin, "/metrics", Some("late-token")).await.unwrap();
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.body.contains("TokenReview"), "{}", a.body);
    assert_eq!(status(admin, "/metrics", Some("late-token")).await, 200);
    double.accept_token("sar-token", "sar-user", &[]);
    double.grant_non_resource("sar-user", "get", "/metrics");
    // Unavailable until cleared (kube's client retries a 503 a few times first).
    double.inject(Fault::error(503).resource("subjectaccessreviews"));
    let a = get(admin, "/metrics", Some("sar-token")).await.unwrap();
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.body.contains("SubjectAccessReview"), "{}", a.body);
    double.clear_faults();
    assert_eq!(status(admin, "/metrics", Some("sar-token")).await, 200);

    let stderr = stop(child);
    assert!(
        stderr.contains("need a bearer token"),
        "startup names the mode: {stderr}"
    );
    double.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_auth_none_serves_everything_open() {
    let double = KubeDouble::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let mut child = spawn_hub(
        &kubeconfig(&double, dir.path()),
        admin,
        &[("TALM_ADMIN_AUTH", "none")],
    );
    wait_ready(&mut child, admin).await;
    assert_eq!(status(admin, "/healthz", None).await, 200);
    assert_eq!(status(admin, "/metrics", None).await, 200);
    assert_eq!(status(admin, "/agents", None).await, 200);
    assert_eq!(reviews(&double, "tokenreviews"), 0);
    assert_eq!(reviews(&double, "subjectaccessreviews"), 0);
    let stderr = stop(child);
    assert!(
        stderr.contains("--admin-auth none"),
        "startup warns: {stderr}"
    );
    double.shutdown().await;
}
