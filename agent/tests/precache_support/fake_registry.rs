//! A hostile registry (issue 14 items 8 and 9): a small std TCP server on 127.0.0.1 that speaks
//! just enough of the registry HTTP API for what the real `docker-registry` will not do:
//! - `<host>/trickle/app:v1` ([`FakeRegistry::image`]): `GET /v2/`, its manifest and config at
//!   full speed, and its one layer one byte every `delay` (with a `Content-Length` of the whole
//!   layer, so the client waits for the rest). Range requests are ignored (a full 200 answer
//!   every time, as some registries do).
//! - `<host>/trickle/huge:v1` ([`FakeRegistry::huge_image`]): a manifest of
//!   [`HUGE_MANIFEST_BYTES`] (1 GiB), generated as it is sent, chunked (no `Content-Length`),
//!   so the client can only stop by counting. docker-registry refuses to serve a manifest over
//!   4 MiB itself ("storage: read exceeds limit"), so it cannot play this part.
//!
//! Every other path is a 404.
//!
//! The layer is random bytes under a `tar` media type: enough for `precache run --no-import`,
//! which never unpacks it. Dropping the server stops it (trickling connections end at their
//! next byte).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Bytes of the huge manifest.
pub const HUGE_MANIFEST_BYTES: u64 = 1 << 30;

/// The running server.
#[derive(Debug)]
pub struct FakeRegistry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// `<host>/trickle/app:v1`.
    pub image: String,
    /// `<host>/trickle/huge:v1`.
    pub huge_image: String,
    /// Bytes of the huge manifest sent so far (all connections).
    pub huge_bytes_sent: Arc<AtomicU64>,
    /// The trickled layer's digest.
    pub layer_digest: String,
    /// GETs of the layer so far.
    pub layer_gets: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

fn sha256(b: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    format!("sha256:{}", talm_shared::hex::encode(d.as_ref()))
}

impl FakeRegistry {
    /// Starts a server whose layer has `layer_size` bytes, sent one byte every `delay`.
    pub fn start(layer_size: usize, delay: Duration) -> FakeRegistry {
        let layer: Vec<u8> = (0..layer_size).map(|i| (i * 7 % 251) as u8).collect();
        let config = json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
        })
        .to_string()
        .into_bytes();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": sha256(&layer), "size": layer.len()}],
        })
        .to_string()
        .into_bytes();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let layer_gets = Arc::new(AtomicU64::new(0));
        let huge_sent = Arc::new(AtomicU64::new(0));
        let t = FakeRegistry {
            image: format!("{host}/trickle/app:v1"),
            huge_image: format!("{host}/trickle/huge:v1"),
            huge_bytes_sent: huge_sent.clone(),
            layer_digest: sha256(&layer),
            host,
            layer_gets: layer_gets.clone(),
            stop: stop.clone(),
        };
        let content = Arc::new(Content {
            manifest_digest: sha256(&manifest),
            config_digest: sha256(&config),
            layer_digest: sha256(&layer),
            manifest,
            config,
            layer,
            delay,
            huge_sent,
        });
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (content, stop, gets) = (content.clone(), stop.clone(), layer_gets.clone());
                std::thread::spawn(move || serve(conn, &content, &stop, &gets));
            }
        });
        t
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(&self.host);
    }
}

struct Content {
    manifest: Vec<u8>,
    manifest_digest: String,
    config: Vec<u8>,
    config_digest: String,
    layer: Vec<u8>,
    layer_digest: String,
    delay: Duration,
    huge_sent: Arc<AtomicU64>,
}

/// Serves requests on one connection until it closes (keep-alive), or until a trickle ends.
fn serve(conn: TcpStream, c: &Content, stop: &AtomicBool, gets: &AtomicU64) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        // Skip the headers.
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let head = method == "HEAD";
        let ok = |out: &mut TcpStream, ctype: &str, body: &[u8], digest: Option<&str>| {
            let mut h = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n",
                body.len()
            );
            if let Some(d) = digest {
                h.push_str(&format!("Docker-Content-Digest: {d}\r\n"));
            }
            h.push_str("\r\n");
            out.write_all(h.as_bytes())?;
            if !head {
                out.write_all(body)?;
            }
            out.flush()
        };
        let blob = |d: &str| format!("/v2/trickle/app/blobs/{d}");
        let res = if path == "/v2/" {
            ok(&mut out, "application/json", b"{}", None)
        } else if path == "/v2/trickle/app/manifests/v1"
            || path == format!("/v2/trickle/app/manifests/{}", c.manifest_digest)
        {
            ok(
                &mut out,
                OCI_MANIFEST,
                &c.manifest,
                Some(&c.manifest_digest),
            )
        } else if path == "/v2/trickle/huge/manifests/v1" && !head {
            let h = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {OCI_MANIFEST}\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            if out.write_all(h.as_bytes()).is_err() {
                return;
            }
            let prefix = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","annotations":{{"pad":""#
            );
            let mut sent = 0u64;
            let chunk = vec![b'x'; 64 << 10];
            while sent < HUGE_MANIFEST_BYTES {
                let data: &[u8] = if sent == 0 { prefix.as_bytes() } else { &chunk };
                let mut frame = format!("{:x}\r\n", data.len()).into_bytes();
                frame.extend_from_slice(data);
                frame.extend_from_slice(b"\r\n");
                if stop.load(Ordering::SeqCst) || out.write_all(&frame).is_err() {
                    return;
                }
                sent += data.len() as u64;
                c.huge_sent.fetch_add(data.len() as u64, Ordering::SeqCst);
            }
            out.write_all(b"2\r\n\"}\r\n1\r\n}\r\n0\r\n\r\n")
                .and_then(|()| out.flush())
        } else if path == blob(&c.config_digest) {
            ok(
                &mut out,
                "application/octet-stream",
                &c.config,
                Some(&c.config_digest),
            )
        } else if path == blob(&c.layer_digest) && !head {
            gets.fetch_add(1, Ordering::SeqCst);
            let h = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nDocker-Content-Digest: {}\r\n\r\n",
                c.layer.len(),
                c.layer_digest
            );
            if out.write_all(h.as_bytes()).is_err() {
                return;
            }
            for b in &c.layer {
                if stop.load(Ordering::SeqCst) || out.write_all(&[*b]).is_err() {
                    return;
                }
                let _ = out.flush();
                std::thread::sleep(c.delay);
            }
            Ok(())
        } else {
            let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"not here"}]}"#;
            let h = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            out.write_all(h.as_bytes())
                .and_then(|()| out.write_all(body))
                .and_then(|()| out.flush())
        };
        if res.is_err() {
            return;
        }
    }
}
