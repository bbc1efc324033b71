//! Test support for pre-caching (issue 4 §5/§6): a real Debian `docker-registry` on 127.0.0.1
//! (plain HTTP, or TLS with a private rcgen CA plus htpasswd basic auth), and a synthetic
//! OpenShift-like image set built offline with umoci and pushed with skopeo: a release image
//! whose `release-manifests/image-references` points (by digest) at N component images sharing
//! base layers, a file-based-catalog operator index with two packages and two channels each, the
//! bundle and related images of every bundle, and a couple of additional images.
//!
//! Bytes served by the registry are counted from its own log: every `response completed` line of
//! a `GET /v2/<name>/blobs/sha256:…` with status 200 or 206 adds its `http.response.written`.
//! The registry writes that line when a request ends (also when the client aborts it), so a
//! request still in flight is not counted yet, and one cut by [`Registry::stop`] (SIGKILL) is
//! never counted. Manifests are not blobs and are not counted.
//!
//! Tools are required, not optional: a missing tool panics with the apt packages to install
//! (CI installs them in `.ci/run`).
// Tests spawn the real registry, umoci and skopeo: process spawning is the point here.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::missing_panics_doc
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

// A test that includes both support modules gets two copies of this one; that is fine.
#[allow(clippy::duplicate_mod)]
#[path = "../tls_support/mod.rs"]
mod tls_support;

use serde_json::{Value, json};
use tls_support::TestCa;

pub mod fake_registry;
pub mod node;

/// The apt packages that provide every tool these helpers run.
pub const APT_HINT: &str = "apt-get install -y --no-install-recommends docker-registry skopeo umoci podman runc uidmap fuse-overlayfs (see .ci/run)";

/// The user name of the TLS registry's basic auth.
pub const AUTH_USER: &str = "talm";
/// The password of the TLS registry's basic auth.
pub const AUTH_PASSWORD: &str = "talm-precache-test-pw";

/// Fixed timestamp written into every image config and history entry (reproducible digests).
const CREATED: &str = "2024-01-01T00:00:00Z";

/// Panics with a clear message when one of `tools` is not on `PATH`.
pub fn require_tools(tools: &[&str]) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for t in tools {
        let found = std::env::split_paths(&path).any(|d| d.join(t).is_file());
        assert!(
            found,
            "required tool `{t}` is not installed (not on PATH); install it: {APT_HINT}"
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running (or stopped) `docker-registry serve` on 127.0.0.1 with filesystem storage in a
/// temp dir. Dropping it kills the process and removes the storage.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// The private CA (PEM) when the registry serves TLS.
    pub ca_pem: Option<PathBuf>,
    /// Basic-auth credentials when the registry requires them.
    pub basic_auth: Option<(String, String)>,
    /// The CA in DER (TLS registry only), for in-process clients.
    pub ca_der: Option<Vec<u8>>,
    /// A directory holding `ca.crt`, for `skopeo --cert-dir` / podman `--cert-dir`.
    pub cert_dir: Option<PathBuf>,
    /// The registry's log (stdout+stderr, appended across restarts).
    pub log: PathBuf,
    /// The filesystem storage root.
    pub storage: PathBuf,
    /// A permissive `policy.json` for skopeo/podman (`--policy`/`--signature-policy`).
    pub policy: PathBuf,
    /// An empty `registries.conf` (so the host's configuration does not interfere).
    pub registries_conf: PathBuf,
    /// A containers auth file (`{"auths":{host:{auth}}}`, the kubelet `config.json` format too);
    /// `{}` for the plain registry.
    pub auth_file: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a plain-HTTP registry on a free port.
    pub fn start_plain() -> Registry {
        Self::start(false)
    }

    /// Starts a TLS registry (private CA, certificate for 127.0.0.1/localhost) that requires
    /// htpasswd basic auth ([`AUTH_USER`]/[`AUTH_PASSWORD`]).
    pub fn start_tls_auth() -> Registry {
        Self::start(true)
    }

    fn start(tls_auth: bool) -> Registry {
        require_tools(&["docker-registry"]);
        let dir = tempfile::Builder::new()
            .prefix("talm-registry-")
            .tempdir()
            .unwrap();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let policy = dir.path().join("policy.json");
        std::fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        let registries_conf = dir.path().join("registries.conf");
        std::fs::write(&registries_conf, "").unwrap();
        let log = dir.path().join("registry.log");
        let config = dir.path().join("config.yml");
        let auth_file = dir.path().join("auth.json");
        std::fs::write(&auth_file, "{}").unwrap();
        // Written once: skopeo runs in parallel read it (rewriting it per call raced with them).
        std::fs::write(dir.path().join("no-auth.json"), "{}").unwrap();

        let mut reg = Registry {
            host: String::new(),
            ca_pem: None,
            basic_auth: None,
            ca_der: None,
            cert_dir: None,
            log,
            storage,
            policy,
            registries_conf,
            auth_file,
            config,
            child: None,
            dir,
        };
        let mut tls_yaml = String::new();
        let mut auth_yaml = String::new();
        if tls_auth {
            let tls = make_tls(&reg.dir.path().join("tls"));
            tls_yaml = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                tls.cert.display(),
                tls.key.display()
            );
            let htpasswd = reg.dir.path().join("htpasswd");
            let hash = bcrypt::hash(AUTH_PASSWORD, 4).unwrap();
            std::fs::write(&htpasswd, format!("{AUTH_USER}:{hash}\n")).unwrap();
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: talm-test\n    path: {}\n",
                htpasswd.display()
            );
            reg.ca_pem = Some(tls.ca_pem);
            reg.ca_der = Some(tls.ca_der);
            reg.cert_dir = Some(tls.cert_dir);
            reg.basic_auth = Some((AUTH_USER.to_owned(), AUTH_PASSWORD.to_owned()));
        }
        // A port picked now may be taken before the registry binds it: retry with a new one.
        let mut last_err = String::new();
        for _ in 0..5 {
            reg.host = format!("127.0.0.1:{}", free_port());
            let yaml = format!(
                "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  cache:\n    blobdescriptor: inmemory\n\
                 http:\n  addr: {}\n  secret: talm-precache-test-secret\n{tls_yaml}{auth_yaml}",
                reg.storage.display(),
                reg.host
            );
            std::fs::write(&reg.config, yaml).unwrap();
            match reg.spawn() {
                Ok(()) => {
                    if reg.basic_auth.is_some() {
                        let auth = base64_encode(&format!("{AUTH_USER}:{AUTH_PASSWORD}"));
                        let v = json!({"auths": {reg.host.clone(): {"auth": auth}}});
                        std::fs::write(&reg.auth_file, v.to_string()).unwrap();
                    }
                    return reg;
                }
                Err(e) => last_err = e,
            }
        }
        panic!("docker-registry did not start: {last_err}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawning docker-registry: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!("exited with {status}; log tail: {tail:?}"));
            }
            if TcpStream::connect(&self.host).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("not listening on {} after 20 s", self.host));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://host` or `https://host`.
    pub fn url(&self) -> String {
        if self.ca_pem.is_some() {
            format!("https://{}", self.host)
        } else {
            format!("http://{}", self.host)
        }
    }

    /// Whether the registry serves TLS.
    pub fn is_tls(&self) -> bool {
        self.ca_pem.is_some()
    }

    /// Kills the registry process (SIGKILL) and waits for it. Storage is kept.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the registry again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.stop();
        let mut last = String::new();
        for _ in 0..10 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("docker-registry did not restart on {}: {last}", self.host);
    }

    /// Whether the registry process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The data file of blob `digest` (`sha256:<hex>`) in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Every completed blob GET (status 200 or 206) in the registry log, in order.
    pub fn blob_requests(&self) -> Vec<BlobRequest> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().filter_map(parse_blob_line).collect()
    }

    /// Bytes of blob bodies served so far (see the module header). Waits until the log has been
    /// stable for 200 ms (at most 5 s), since the registry logs a request just after it ends.
    pub fn served_blob_bytes(&self) -> u64 {
        let sum = |r: &Registry| r.blob_requests().iter().map(|b| b.written).sum::<u64>();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = sum(self);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = sum(self);
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// Common skopeo arguments for reading from (`src == true`) or writing to this registry:
    /// TLS verification off for plain HTTP, or the CA dir and credentials for TLS.
    pub fn skopeo_tls_args(&self, src: bool) -> Vec<String> {
        let p = if src { "--src" } else { "--dest" };
        let mut v = Vec::new();
        match &self.cert_dir {
            Some(d) => v.push(format!("{p}-cert-dir={}", d.display())),
            None => v.push(format!("{p}-tls-verify=false")),
        }
        if let Some((u, pw)) = &self.basic_auth {
            v.push(format!("{p}-creds={u}:{pw}"));
        }
        v
    }

    /// A `skopeo` command with this registry's policy, an empty auth file and an empty
    /// registries.conf (the host's files do not interfere).
    pub fn skopeo(&self) -> Command {
        let mut c = Command::new("skopeo");
        c.env("CONTAINERS_REGISTRIES_CONF", &self.registries_conf)
            .env("REGISTRY_AUTH_FILE", self.dir.path().join("no-auth.json"))
            .arg("--policy")
            .arg(&self.policy);
        c
    }

    /// `skopeo inspect --raw` of `spec` (`host/repo:tag` or `@digest`) with this registry's TLS and
    /// credentials; returns the manifest JSON or the error output.
    pub fn inspect_raw(&self, spec: &str) -> Result<Value, String> {
        let mut c = self.skopeo();
        c.arg("inspect").arg("--raw");
        for a in self.skopeo_tls_args(false) {
            // `inspect` takes the unprefixed flag names.
            c.arg(a.replacen("--dest-", "--", 1));
        }
        c.arg(format!("docker://{spec}"));
        let out = c.output().map_err(|e| format!("running skopeo: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("manifest of {spec}: {e}"))
    }

    /// A GET on the registry's HTTP API (`path` like `/v2/_catalog`), over TLS when the registry
    /// serves TLS, with basic auth when `auth` is true. Returns (status, body).
    pub fn api_get(&self, path: &str, auth: bool) -> (u16, Vec<u8>) {
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: talm-test\r\n",
            self.host
        );
        if auth && let Some((u, p)) = &self.basic_auth {
            req.push_str(&format!(
                "Authorization: Basic {}\r\n",
                base64_encode(&format!("{u}:{p}"))
            ));
        }
        req.push_str("\r\n");
        let tcp = TcpStream::connect(&self.host).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let raw = match &self.ca_der {
            None => {
                let mut tcp = tcp;
                tcp.write_all(req.as_bytes()).unwrap();
                read_all(&mut tcp)
            }
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(rustls::pki_types::CertificateDer::from(ca.clone()))
                    .unwrap();
                let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
                let mut s = rustls::StreamOwned::new(conn, tcp);
                s.write_all(req.as_bytes()).unwrap();
                read_all(&mut s)
            }
        };
        parse_http_response(&raw)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One completed blob download, from the registry log.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobRequest {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The repository name.
    pub repo: String,
    /// 200 or 206.
    pub status: u16,
    /// Body bytes written.
    pub written: u64,
    /// When the request ended (the log line's RFC 3339 `time`).
    pub end: String,
    /// How long the request took, in seconds (`http.response.duration`).
    pub duration_s: f64,
}

/// Parses a Go duration (`850.5ms`, `1.2s`, `1m2.5s`, `12µs`) into seconds.
pub fn go_duration_secs(s: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "µs" | "us" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    Some(total)
}

fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    if let Some(q) = rest.strip_prefix('"') {
        let end = q.find('"')?;
        Some(&q[..end])
    } else {
        Some(rest.split(' ').next().unwrap_or(""))
    }
}

fn parse_blob_line(line: &str) -> Option<BlobRequest> {
    if !line.contains("msg=\"response completed") {
        return None;
    }
    if log_field(line, "http.request.method")? != "GET" {
        return None;
    }
    let uri = log_field(line, "http.request.uri")?;
    let path = uri.split('?').next().unwrap_or(uri);
    let (repo, digest) = path.strip_prefix("/v2/")?.split_once("/blobs/")?;
    if !digest.starts_with("sha256:") {
        return None;
    }
    let status: u16 = log_field(line, "http.response.status")?.parse().ok()?;
    if status != 200 && status != 206 {
        return None;
    }
    let written = log_field(line, "http.response.written")?.parse().ok()?;
    let end = line
        .strip_prefix("time=\"")
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
        .to_owned();
    let duration_s = log_field(line, "http.response.duration")
        .and_then(go_duration_secs)
        .unwrap_or(0.0);
    Some(BlobRequest {
        digest: digest.to_owned(),
        repo: repo.to_owned(),
        status,
        written,
        end,
        duration_s,
    })
}

fn read_all(r: &mut impl Read) -> Vec<u8> {
    // Read to EOF; a TLS peer that closes without close_notify ends the read with an error
    // after all data has arrived.
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn parse_http_response(raw: &[u8]) -> (u16, Vec<u8>) {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response without header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("HTTP status line");
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_str = String::from_utf8_lossy(&rest[..nl]);
            let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or(0);
            if size == 0 {
                break;
            }
            let start = nl + 2;
            out.extend_from_slice(&rest[start..start + size]);
            rest = &rest[start + size + 2..];
        }
        body = out;
    }
    (status, body)
}

/// Standard base64 (RFC 4648 with padding).
pub fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

struct TlsFiles {
    ca_pem: PathBuf,
    ca_der: Vec<u8>,
    cert_dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_tls(dir: &Path) -> TlsFiles {
    std::fs::create_dir_all(dir).unwrap();
    let ca = TestCa::new("talm test registry CA");
    let (cert, key) = ca.loopback_leaf(
        "127.0.0.1",
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
    );
    let ca_pem = dir.join("ca.pem");
    std::fs::write(&ca_pem, &ca.cert_pem).unwrap();
    let cert_dir = dir.join("certs.d");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::write(cert_dir.join("ca.crt"), &ca.cert_pem).unwrap();
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    TlsFiles {
        ca_pem,
        ca_der: ca.cert_der,
        cert_dir,
        cert: cert_path,
        key: key_path,
    }
}

// ------------------------------------------------------------------------------- fixture

/// Sizes of the synthetic layers (bytes of incompressible content per layer).
#[derive(Debug, Clone, Copy)]
pub struct LayerSizes {
    /// The three base layers every component image shares (largest first).
    pub base: [usize; 3],
    /// The unique layer of each image.
    pub unique: usize,
    /// The seed of the content generator.
    pub seed: u64,
    /// Release components get [`LayerSizes::component_layer`]'s release-like sizes instead of
    /// `unique` (operator and extra images keep `unique`).
    pub release_like: bool,
}

const MIB: usize = 1 << 20;

impl LayerSizes {
    /// Small sizes for tests: 1 MiB + 256 KiB + 64 KiB shared, 16 KiB unique.
    pub const TEST: LayerSizes = LayerSizes {
        base: [1 << 20, 256 << 10, 64 << 10],
        unique: 16 << 10,
        seed: 4,
        release_like: false,
    };

    /// A release-like set (the benchmark's `--set large`): shared base layers of 80, 24 and
    /// 4 MiB (an OS base and two runtime layers), and per release component one layer of
    /// [`LayerSizes::component_layer`]: four large ones (480, 320, 200, 120 MiB, like the
    /// installer, hyperkube, tools and ironic images), one component in eight with a medium
    /// layer (24–64 MiB) and the rest small (0.25–6 MiB); operator and extra images 2 MiB.
    /// With 160 components: about 2.4 GiB of unique blobs.
    pub const RELEASE: LayerSizes = LayerSizes {
        base: [80 * MIB, 24 * MIB, 4 * MIB],
        unique: 2 * MIB,
        seed: 0x5eed,
        release_like: true,
    };

    /// The size of release component `i`'s own layer.
    pub fn component_layer(&self, i: usize) -> usize {
        if !self.release_like {
            return self.unique;
        }
        match i {
            1 => 480 * MIB,
            4 => 320 * MIB,
            22 => 200 * MIB,
            24 => 120 * MIB,
            _ if i % 8 == 3 => (24 + (i * 7) % 41) * MIB,
            _ => (256 << 10) * (1 + (i * 37) % 24),
        }
    }
}

/// The synthetic image set, as pushed.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Pull spec of the release image (by tag).
    pub release: String,
    /// Pull spec of the release image by digest.
    pub release_digest: String,
    /// (image-references tag name, pull spec by digest), in file order.
    pub release_images: Vec<(String, String)>,
    /// Pull spec of the FBC index image (by tag).
    pub index: String,
    /// ((package, channel), sorted unique images of the channel head: bundle + relatedImages),
    /// for every package and channel in the catalog.
    pub catalog: Vec<((String, String), Vec<String>)>,
    /// Each package's default channel.
    pub default_channels: Vec<(String, String)>,
    /// Extra images (by tag).
    pub additional: Vec<String>,
    /// Sum of the sizes of the unique blobs (configs and layers) of: the release image, the index
    /// image, every `release_images` entry, every image of every `catalog` entry (all four
    /// package/channel pairs) and every `additional` image. See [`Fixture::unique_bytes`] for
    /// other sets.
    pub unique_blob_bytes: u64,
    /// Blob digests (config first, then layers) of every pushed image, keyed by every pull spec
    /// this fixture lists for it.
    pub image_blobs: BTreeMap<String, Vec<String>>,
    /// Size of every blob by digest.
    pub blob_sizes: BTreeMap<String, u64>,
    /// The source host written into the references (`source_host` or the registry's host).
    pub ref_host: String,
}

impl Fixture {
    /// Sum of the sizes of the unique blobs of the images `specs` (pull specs this fixture lists).
    pub fn unique_bytes<S: AsRef<str>>(&self, specs: &[S]) -> u64 {
        let mut set = BTreeSet::new();
        for s in specs {
            let blobs = self
                .image_blobs
                .get(s.as_ref())
                .unwrap_or_else(|| panic!("{} is not an image of the fixture", s.as_ref()));
            set.extend(blobs.iter().cloned());
        }
        set.iter().map(|d| self.blob_sizes[d]).sum()
    }

    /// Every image a full pre-cache lists (release images, all catalog images, additional), sorted
    /// and unique; the release and index images themselves are not included.
    pub fn all_listed_images(&self) -> Vec<String> {
        let mut set = BTreeSet::new();
        set.extend(self.release_images.iter().map(|(_, s)| s.clone()));
        for (_, imgs) in &self.catalog {
            set.extend(imgs.iter().cloned());
        }
        set.extend(self.additional.iter().cloned());
        set.into_iter().collect()
    }

    /// Rewrites a pull spec's host from the reference host to `reg.host` (for checks that go
    /// straight to the registry when references name a mirrored source host).
    pub fn on_registry(&self, reg: &Registry, spec: &str) -> String {
        match spec.strip_prefix(&format!("{}/", self.ref_host)) {
            Some(rest) => format!("{}/{rest}", reg.host),
            None => spec.to_owned(),
        }
    }
}

/// Deterministic byte generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Writes an uncompressed tar with fixed metadata. Directories are implied by the paths.
fn write_tar(path: &Path, files: &[(String, Vec<u8>)]) {
    let f = std::fs::File::create(path).unwrap();
    let mut b = tar::Builder::new(f);
    let mut dirs = BTreeSet::new();
    for (name, _) in files {
        let mut p = Path::new(name).parent();
        while let Some(d) = p {
            if d.as_os_str().is_empty() {
                break;
            }
            dirs.insert(format!("{}/", d.display()));
            p = d.parent();
        }
    }
    for d in &dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(1_704_067_200);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        b.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(1_704_067_200);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap().sync_all().unwrap();
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (install: {APT_HINT})"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An OCI layout being built with umoci.
struct Layout {
    dir: PathBuf,
    tmp: PathBuf,
    n: usize,
}

impl Layout {
    fn new(dir: &Path) -> Layout {
        let layout = dir.join("layout");
        run(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout));
        let tmp = dir.join("tars");
        std::fs::create_dir_all(&tmp).unwrap();
        let l = Layout {
            dir: layout,
            tmp,
            n: 0,
        };
        run(Command::new("umoci")
            .args(["new", "--image"])
            .arg(l.image("scratch")));
        run(Command::new("umoci")
            .args(["config", "--image"])
            .arg(l.image("scratch"))
            .args([
                "--created",
                CREATED,
                "--author",
                "talm tests",
                "--os",
                "linux",
                "--architecture",
                "amd64",
            ]));
        l
    }

    fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.dir.display())
    }

    /// Tags `to` as `from` plus a layer holding `files`.
    fn add_layer(&mut self, from: &str, to: &str, files: &[(String, Vec<u8>)]) {
        self.n += 1;
        let tar = self.tmp.join(format!("layer-{}.tar", self.n));
        write_tar(&tar, files);
        run(Command::new("umoci")
            .args(["raw", "add-layer", "--image"])
            .arg(self.image(from))
            .args(["--tag", to, "--history.created", CREATED])
            .args([
                "--history.created_by",
                &format!("talm fixture layer {}", self.n),
            ])
            .arg(&tar));
        let _ = std::fs::remove_file(&tar);
    }

    fn config(&self, tag: &str, args: &[String]) {
        run(Command::new("umoci")
            .args(["config", "--image"])
            .arg(self.image(tag))
            .args(args));
    }

    /// The (config + layer) digests and sizes of `tag`, and its manifest digest.
    fn blobs(&self, tag: &str) -> (String, Vec<(String, u64)>) {
        let index: Value =
            serde_json::from_slice(&std::fs::read(self.dir.join("index.json")).unwrap()).unwrap();
        let desc = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("tag {tag} not in layout"));
        let mdigest = desc["digest"].as_str().unwrap().to_owned();
        let m: Value = serde_json::from_slice(
            &std::fs::read(
                self.dir
                    .join("blobs/sha256")
                    .join(mdigest.trim_start_matches("sha256:")),
            )
            .unwrap(),
        )
        .unwrap();
        let mut out = vec![(
            m["config"]["digest"].as_str().unwrap().to_owned(),
            m["config"]["size"].as_u64().unwrap(),
        )];
        for l in m["layers"].as_array().unwrap() {
            out.push((
                l["digest"].as_str().unwrap().to_owned(),
                l["size"].as_u64().unwrap(),
            ));
        }
        (mdigest, out)
    }
}

/// One image to push: layout tag → `repo:tag` on the registry.
struct Push {
    layout_tag: String,
    repo: String,
    tag: String,
}

/// Pushes with skopeo (a few at a time) and returns the manifest digests, in order.
fn push_all(reg: &Registry, layout: &Layout, pushes: &[Push], workdir: &Path) -> Vec<String> {
    let results: Vec<std::sync::Mutex<Option<String>>> =
        pushes.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= pushes.len() {
                        return;
                    }
                    let p = &pushes[i];
                    let df = workdir.join(format!("digest-{i}"));
                    let push = || {
                        let mut c = reg.skopeo();
                        c.args(["copy", "--quiet", "--digestfile"]).arg(&df);
                        c.args(reg.skopeo_tls_args(false));
                        c.arg(format!("oci:{}", layout.image(&p.layout_tag)));
                        c.arg(format!("docker://{}/{}:{}", reg.host, p.repo, p.tag));
                        c
                    };
                    // docker-registry sometimes answers 500 when several pushes upload the same
                    // shared blob at once: retry a failed push (the last attempt must succeed).
                    for _ in 0..3 {
                        if push().output().is_ok_and(|o| o.status.success()) {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(300));
                    }
                    if !df.exists() {
                        run(&mut push());
                    }
                    let d = std::fs::read_to_string(&df).unwrap().trim().to_owned();
                    *results[i].lock().unwrap() = Some(d);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| m.into_inner().unwrap().unwrap())
        .collect()
}

/// Tag names for release components, OpenShift-like (cloud-specific ones make exclude patterns
/// such as `aws` or `^azure-` meaningful).
const COMPONENT_NAMES: &[&str] = &[
    "cli",
    "installer",
    "machine-config-operator",
    "etcd",
    "hyperkube",
    "aws-ebs-csi-driver",
    "aws-machine-controllers",
    "azure-disk-csi-driver",
    "azure-machine-controllers",
    "gcp-pd-csi-driver",
    "ovn-kubernetes",
    "multus-cni",
    "coredns",
    "haproxy-router",
    "oauth-server",
    "console",
    "prometheus",
    "cluster-monitoring-operator",
    "cluster-network-operator",
    "cluster-etcd-operator",
    "cluster-kube-apiserver-operator",
    "must-gather",
    "tools",
    "pod",
    "ironic",
    "baremetal-installer",
    "ovirt-csi-driver",
    "openstack-cinder-csi-driver",
    "vsphere-csi-driver",
    "kube-proxy",
];

fn component_name(i: usize) -> String {
    match COMPONENT_NAMES.get(i) {
        Some(n) => (*n).to_owned(),
        None => format!("component-{i:03}"),
    }
}

/// Builds and pushes the synthetic image set into `reg` with [`LayerSizes::TEST`].
/// `source_host`: the host the references name (`None` → `reg.host`).
pub fn build_fixture(
    reg: &Registry,
    n_release_images: usize,
    source_host: Option<&str>,
) -> Fixture {
    build_fixture_with(reg, n_release_images, source_host, LayerSizes::TEST)
}

/// [`build_fixture`] with explicit layer sizes (the benchmark uses larger ones).
pub fn build_fixture_with(
    reg: &Registry,
    n_release_images: usize,
    source_host: Option<&str>,
    sizes: LayerSizes,
) -> Fixture {
    require_tools(&["umoci", "skopeo"]);
    let work = tempfile::Builder::new()
        .prefix("talm-fixture-")
        .tempdir()
        .unwrap();
    let mut layout = Layout::new(work.path());
    let mut rng = Rng(sizes.seed);
    let ref_host = source_host.unwrap_or(&reg.host).to_owned();

    // Shared base layers: base-a (all), base-ab, base-abc.
    let os_release = b"NAME=\"talm synthetic base\"\nID=talmbase\nVERSION_ID=1\n".to_vec();
    layout.add_layer(
        "scratch",
        "base-a",
        &[
            ("etc/os-release".to_owned(), os_release),
            (
                "usr/lib/base-a/blob.bin".to_owned(),
                rng.bytes(sizes.base[0]),
            ),
        ],
    );
    layout.add_layer(
        "base-a",
        "base-ab",
        &[(
            "usr/lib/base-b/blob.bin".to_owned(),
            rng.bytes(sizes.base[1]),
        )],
    );
    layout.add_layer(
        "base-ab",
        "base-abc",
        &[(
            "usr/lib/base-c/blob.bin".to_owned(),
            rng.bytes(sizes.base[2]),
        )],
    );

    let mut pushes = Vec::new();
    // Release components, all in one repository like OpenShift's ocp-v4.0-art-dev.
    let art_repo = "openshift-release-dev/ocp-v4.0-art-dev";
    let names: Vec<String> = (0..n_release_images).map(component_name).collect();
    for (i, name) in names.iter().enumerate() {
        let lt = format!("comp-{name}");
        layout.add_layer(
            "base-abc",
            &lt,
            &[
                (
                    format!("usr/share/{name}/payload.bin"),
                    rng.bytes(sizes.component_layer(i)),
                ),
                (format!("usr/share/{name}/NAME"), name.as_bytes().to_vec()),
            ],
        );
        pushes.push(Push {
            layout_tag: lt,
            repo: art_repo.to_owned(),
            tag: name.clone(),
        });
    }
    let n_comp = pushes.len();

    // Operators: per package, three bundle versions; operator images on base-a; one daemon image
    // shared by the v4.99.x bundles.
    let packages = ["ptp-operator", "sriov-network-operator"];
    let versions = ["4.98.0", "4.99.0", "4.99.1"];
    // (package, version) -> push indexes of (bundle, operator, daemon)
    let mut op_push: BTreeMap<(String, String), (usize, usize, usize)> = BTreeMap::new();
    for pkg in packages {
        let daemon_old = pushes.len();
        let lt = format!("{pkg}-daemon-old");
        layout.add_layer(
            "base-a",
            &lt,
            &[(format!("usr/bin/{pkg}-daemon"), rng.bytes(sizes.unique))],
        );
        pushes.push(Push {
            layout_tag: lt,
            repo: format!("operators/{pkg}-daemon"),
            tag: "v4.98".to_owned(),
        });
        let daemon_new = pushes.len();
        let lt = format!("{pkg}-daemon-new");
        layout.add_layer(
            "base-a",
            &lt,
            &[(format!("usr/bin/{pkg}-daemon"), rng.bytes(sizes.unique))],
        );
        pushes.push(Push {
            layout_tag: lt,
            repo: format!("operators/{pkg}-daemon"),
            tag: "v4.99".to_owned(),
        });
        for v in versions {
            let op = pushes.len();
            let lt = format!("{pkg}-op-{v}");
            layout.add_layer(
                "base-a",
                &lt,
                &[(format!("usr/bin/{pkg}"), rng.bytes(sizes.unique))],
            );
            pushes.push(Push {
                layout_tag: lt,
                repo: format!("operators/{pkg}"),
                tag: format!("v{v}"),
            });
            let bundle = pushes.len();
            let lt = format!("{pkg}-bundle-{v}");
            let csv = format!(
                "apiVersion: operators.coreos.com/v1alpha1\nkind: ClusterServiceVersion\nmetadata:\n  name: {pkg}.v{v}\n"
            );
            let annotations = format!(
                "annotations:\n  operators.operatorframework.io.bundle.package.v1: {pkg}\n  operators.operatorframework.io.bundle.channels.v1: stable\n"
            );
            layout.add_layer(
                "scratch",
                &lt,
                &[
                    (
                        format!("manifests/{pkg}.clusterserviceversion.yaml"),
                        csv.into_bytes(),
                    ),
                    (
                        "metadata/annotations.yaml".to_owned(),
                        annotations.into_bytes(),
                    ),
                ],
            );
            pushes.push(Push {
                layout_tag: lt,
                repo: format!("operators/{pkg}-bundle"),
                tag: format!("v{v}"),
            });
            let daemon = if v.starts_with("4.99") {
                daemon_new
            } else {
                daemon_old
            };
            op_push.insert((pkg.to_owned(), v.to_owned()), (bundle, op, daemon));
        }
    }

    // Additional images: one on the shared base, one standalone.
    let add_start = pushes.len();
    layout.add_layer(
        "base-ab",
        "extra-tools",
        &[("usr/bin/site-tools".to_owned(), rng.bytes(sizes.unique))],
    );
    pushes.push(Push {
        layout_tag: "extra-tools".to_owned(),
        repo: "extra/site-tools".to_owned(),
        tag: "v1".to_owned(),
    });
    layout.add_layer(
        "scratch",
        "extra-probe",
        &[("probe.bin".to_owned(), rng.bytes(sizes.unique * 2))],
    );
    pushes.push(Push {
        layout_tag: "extra-probe".to_owned(),
        repo: "extra/probe".to_owned(),
        tag: "v1".to_owned(),
    });

    let digests = push_all(reg, &layout, &pushes, work.path());
    let by_digest = |i: usize| format!("{ref_host}/{}@{}", pushes[i].repo, digests[i]);

    // Release image-references.
    let mut release_images = Vec::new();
    let mut tags = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let spec = by_digest(i);
        release_images.push((name.clone(), spec.clone()));
        tags.push(json!({
            "name": name,
            "annotations": {
                "io.openshift.build.commit.id": format!("{:040x}", i + 1),
                "io.openshift.build.source-location": format!("https://github.com/openshift/{name}"),
            },
            "from": {"kind": "DockerImage", "name": spec},
            "generation": null,
            "importPolicy": {},
            "referencePolicy": {"type": "Source"},
        }));
    }
    let image_references = json!({
        "kind": "ImageStream",
        "apiVersion": "image.openshift.io/v1",
        "metadata": {
            "name": "4.99.0",
            "creationTimestamp": null,
            "annotations": {"release.openshift.io/from-image-stream": "ocp/4.99-art-latest"},
        },
        "spec": {"lookupPolicy": {"local": false}, "tags": tags},
        "status": {"dockerImageRepository": ""},
    });
    let release_metadata = json!({
        "kind": "cincinnati-metadata-v0",
        "version": "4.99.0",
        "previous": ["4.98.0", "4.98.1"],
        "metadata": {"url": "https://access.redhat.com/errata/RHSA-2099:0001"},
    });
    layout.add_layer(
        "base-ab",
        "release",
        &[
            (
                "release-manifests/0000_00_cluster-version-operator_00_namespace.yaml".to_owned(),
                b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: openshift-cluster-version\n"
                    .to_vec(),
            ),
            (
                "release-manifests/image-references".to_owned(),
                serde_json::to_vec_pretty(&image_references).unwrap(),
            ),
            (
                "release-manifests/release-metadata".to_owned(),
                serde_json::to_vec_pretty(&release_metadata).unwrap(),
            ),
        ],
    );
    layout.config(
        "release",
        &[
            "--config.label=io.openshift.release=4.99.0".to_owned(),
            "--config.entrypoint=/usr/bin/cluster-version-operator".to_owned(),
        ],
    );

    // The file-based catalog.
    let mut catalog = Vec::new();
    let mut default_channels = Vec::new();
    let mut fbc_files = Vec::new();
    for pkg in packages {
        let bundle_name = |v: &str| format!("{pkg}.v{v}");
        let mut docs = vec![json!({
            "schema": "olm.package",
            "name": pkg,
            "defaultChannel": "stable",
            "description": format!("{pkg} (synthetic)"),
        })];
        // "stable": the head (4.99.0) is listed first, so "last entry" is not the head.
        docs.push(json!({
            "schema": "olm.channel",
            "package": pkg,
            "name": "stable",
            "entries": [
                {"name": bundle_name("4.99.0"), "replaces": bundle_name("4.98.0")},
                {"name": bundle_name("4.98.0")},
            ],
        }));
        docs.push(json!({
            "schema": "olm.channel",
            "package": pkg,
            "name": "4.99",
            "entries": [
                {"name": bundle_name("4.99.0")},
                {"name": bundle_name("4.99.1"), "replaces": bundle_name("4.99.0"), "skipRange": ">=4.98.0 <4.99.1"},
            ],
        }));
        let mut bundle_images: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for v in versions {
            let (b, op, d) = op_push[&(pkg.to_owned(), v.to_owned())];
            let related = vec![
                json!({"name": "", "image": by_digest(b)}),
                json!({"name": pkg, "image": by_digest(op)}),
                json!({"name": format!("{pkg}-daemon"), "image": by_digest(d)}),
            ];
            let mut imgs = vec![by_digest(b), by_digest(op), by_digest(d)];
            imgs.sort();
            imgs.dedup();
            bundle_images.insert(v, imgs);
            docs.push(json!({
                "schema": "olm.bundle",
                "name": bundle_name(v),
                "package": pkg,
                "image": by_digest(b),
                "properties": [
                    {"type": "olm.package", "value": {"packageName": pkg, "version": v}},
                ],
                "relatedImages": related,
            }));
        }
        catalog.push((
            (pkg.to_owned(), "stable".to_owned()),
            bundle_images["4.99.0"].clone(),
        ));
        catalog.push((
            (pkg.to_owned(), "4.99".to_owned()),
            bundle_images["4.99.1"].clone(),
        ));
        default_channels.push((pkg.to_owned(), "stable".to_owned()));
        // `opm render` style: a stream of pretty-printed JSON documents.
        let mut text = String::new();
        for d in &docs {
            text.push_str(&serde_json::to_string_pretty(d).unwrap());
            text.push('\n');
        }
        fbc_files.push((format!("configs/{pkg}/catalog.json"), text.into_bytes()));
    }
    layout.add_layer("base-abc", "index", &fbc_files);
    layout.config(
        "index",
        &[
            "--config.label=operators.operatorframework.io.index.configs.v1=/configs".to_owned(),
            "--config.entrypoint=/bin/opm".to_owned(),
        ],
    );
    let top = [
        Push {
            layout_tag: "release".to_owned(),
            repo: "openshift-release-dev/ocp-release".to_owned(),
            tag: "4.99.0-x86_64".to_owned(),
        },
        Push {
            layout_tag: "index".to_owned(),
            repo: "redhat/redhat-operator-index".to_owned(),
            tag: "v4.99".to_owned(),
        },
    ];
    let top_digests = push_all(reg, &layout, &top, work.path());

    // Blob bookkeeping for every listed spec.
    let mut image_blobs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut blob_sizes: BTreeMap<String, u64> = BTreeMap::new();
    let mut record = |specs: &[String], layout_tag: &str, pushed: &str| {
        let (mdigest, blobs) = layout.blobs(layout_tag);
        assert_eq!(
            mdigest, pushed,
            "skopeo pushed {layout_tag} with a different manifest digest than the layout's"
        );
        for (d, s) in &blobs {
            blob_sizes.insert(d.clone(), *s);
        }
        for spec in specs {
            image_blobs.insert(spec.clone(), blobs.iter().map(|b| b.0.clone()).collect());
        }
    };

    for i in 0..pushes.len() {
        let mut specs = vec![by_digest(i)];
        if i >= add_start {
            specs.push(format!("{ref_host}/{}:{}", pushes[i].repo, pushes[i].tag));
        }
        record(&specs, &pushes[i].layout_tag, &digests[i]);
    }
    let release = format!("{ref_host}/{}:{}", top[0].repo, top[0].tag);
    let release_digest = format!("{ref_host}/{}@{}", top[0].repo, top_digests[0]);
    let index = format!("{ref_host}/{}:{}", top[1].repo, top[1].tag);
    record(
        &[release.clone(), release_digest.clone()],
        "release",
        &top_digests[0],
    );
    record(
        &[
            index.clone(),
            format!("{ref_host}/{}@{}", top[1].repo, top_digests[1]),
        ],
        "index",
        &top_digests[1],
    );
    let additional: Vec<String> = (add_start..pushes.len())
        .map(|i| format!("{ref_host}/{}:{}", pushes[i].repo, pushes[i].tag))
        .collect();
    let _ = n_comp;

    let mut fx = Fixture {
        release,
        release_digest,
        release_images,
        index,
        catalog,
        default_channels,
        additional,
        unique_blob_bytes: 0,
        image_blobs,
        blob_sizes,
        ref_host,
    };
    let mut all = fx.all_listed_images();
    all.push(fx.release.clone());
    all.push(fx.index.clone());
    fx.unique_blob_bytes = fx.unique_bytes(&all);
    fx
}
