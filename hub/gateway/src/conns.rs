//! Connection limits of the agent port (issue 14 item 7). The gateway lets clients without a
//! certificate finish the TLS handshake (they may only call `Enroll`), so without limits anyone
//! who can reach the port could hold connections open until the process runs out of file
//! descriptors, and enrollment (and, in one process, `/healthz`) would then fail.
//!
//! Every accepted TCP connection is tracked here from `accept` until it closes:
//!
//! - **Unverified cap, oldest first.** A connection counts as *unverified* from `accept` until
//!   its handshake ends with a client certificate that rustls verified against the agent CA
//!   (connections still in the handshake count too). At most
//!   [`ConnLimits::max_unverified`] unverified connections are kept; a new one evicts the oldest
//!   unverified connection (closed at once, counted as `evicted`). Connections with a verified
//!   certificate are never evicted by this rule.
//! - **Idle timeout.** A connection with no open gRPC stream (`Session`, `Enroll`, `Renew`) for
//!   [`ConnLimits::idle_timeout`] is closed (counted as `idle`), verified or not. The clock
//!   starts when the handshake ends and restarts whenever the last open stream ends; a
//!   connection that only speaks HTTP/2 (pings, settings) without calling an RPC is idle.
//!
//! The services mark streams with [`Conns::open_stream`], keyed by the peer address (unique
//! among the live connections of one listener). The admin endpoint (`/healthz`, `/agents`,
//! `/metrics`) has its own listener and accept loop and is not subject to these rules.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tracing::debug;

use crate::metrics::Reason;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Limits on the connections of the agent port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Close a connection that has had no open stream for this long.
    pub idle_timeout: Duration,
    /// Most connections without a verified client certificate kept at once (at least 1).
    pub max_unverified: usize,
}

/// The default idle timeout, seconds (`--idle-timeout-secs`).
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 30;

/// The default unverified-connection cap (`--max-unverified-connections`): above a whole fleet
/// reconnecting or enrolling at once (every connection is unverified until its handshake ends:
/// a hub restart with 1,000 agents must not evict handshakes in progress), far below a pod's
/// open-file limit.
pub const DEFAULT_MAX_UNVERIFIED: usize = 4096;

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
            max_unverified: DEFAULT_MAX_UNVERIFIED,
        }
    }
}

/// Why the gateway closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// No open stream for the idle timeout.
    Idle,
    /// Evicted (the oldest unverified connection) to admit a new one over the cap.
    Evicted,
    /// The connection ended (no longer tracked).
    Gone,
}

impl CloseReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle",
            CloseReason::Evicted => "evicted",
            CloseReason::Gone => "gone",
        }
    }
}

#[derive(Debug)]
struct Entry {
    addr: SocketAddr,
    verified: bool,
    close: Arc<watch::Sender<Option<CloseReason>>>,
    streams: Arc<watch::Sender<usize>>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    live: HashMap<u64, Entry>,
    by_addr: HashMap<SocketAddr, u64>,
    /// Ids of unverified connections; ids grow with time, so the first is the oldest.
    unverified: BTreeSet<u64>,
}

/// Live connections of the agent port (see the module docs).
#[derive(Debug)]
pub struct Conns {
    limits: ConnLimits,
    inner: Arc<Mutex<Inner>>,
    closed: Family<Reason, Counter>,
}

/// Counts for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Open connections with a verified client certificate.
    pub verified: usize,
    /// Open connections without one (including those in the handshake).
    pub unverified: usize,
    /// Connections closed for idleness, since start.
    pub idle_closed: u64,
    /// Unverified connections evicted by the cap, since start.
    pub evicted: u64,
}

impl Conns {
    /// A tracker with these limits (`max_unverified` is raised to 1 if 0) that counts the
    /// connections it closes in `closed`, by reason (`idle`, `evicted`).
    pub fn new(limits: ConnLimits, closed: Family<Reason, Counter>) -> Self {
        Self {
            limits: ConnLimits {
                max_unverified: limits.max_unverified.max(1),
                ..limits
            },
            inner: Arc::new(Mutex::new(Inner::default())),
            closed,
        }
    }

    fn count(&self, why: CloseReason) -> Counter {
        count(&self.closed, why)
    }

    /// The limits in force.
    pub fn limits(&self) -> ConnLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tracks a just-accepted connection (unverified). When that makes more unverified
    /// connections than the cap, the oldest ones are told to close.
    pub fn register(&self, addr: SocketAddr) -> Registration {
        let (close, closed) = watch::channel(None);
        let (streams, _) = watch::channel(0usize);
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.live.insert(
            id,
            Entry {
                addr,
                verified: false,
                close: Arc::new(close),
                streams: Arc::new(streams),
            },
        );
        inner.by_addr.insert(addr, id);
        inner.unverified.insert(id);
        while inner.unverified.len() > self.limits.max_unverified {
            let Some(oldest) = inner.unverified.pop_first() else {
                break;
            };
            self.count(CloseReason::Evicted).inc();
            if let Some(e) = inner.live.get(&oldest) {
                debug!(peer = %e.addr, "closing the oldest unverified connection (cap reached)");
                e.close.send_replace(Some(CloseReason::Evicted));
            }
        }
        Registration {
            id,
            inner: self.inner.clone(),
            closed,
            idle_closed: self.count(CloseReason::Idle),
        }
    }

    /// Marks an open stream on the connection from `addr` until the guard is dropped (no-op for
    /// an unknown address, e.g. a request that did not come through the tracked listener).
    pub fn open_stream(&self, addr: Option<SocketAddr>) -> StreamGuard {
        let streams = addr.and_then(|a| {
            let inner = self.lock();
            let id = inner.by_addr.get(&a)?;
            inner.live.get(id).map(|e| e.streams.clone())
        });
        if let Some(s) = &streams {
            s.send_modify(|n| *n += 1);
        }
        StreamGuard { streams }
    }

    /// Current counts.
    pub fn stats(&self) -> ConnStats {
        let inner = self.lock();
        let verified = inner.live.values().filter(|e| e.verified).count();
        ConnStats {
            verified,
            unverified: inner.live.len() - verified,
            idle_closed: self.count(CloseReason::Idle).get(),
            evicted: self.count(CloseReason::Evicted).get(),
        }
    }
}

/// A tracked connection; dropping it forgets the connection.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    inner: Arc<Mutex<Inner>>,
    closed: watch::Receiver<Option<CloseReason>>,
    idle_closed: Counter,
}

impl Registration {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when the gateway decides to close this connection.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.closed.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(r) => (*r).unwrap_or(CloseReason::Gone),
            Err(_) => CloseReason::Gone,
        }
    }

    /// Records the outcome of the handshake: `verified` when a client certificate was
    /// presented (rustls has verified it against the agent CA by then). A verified connection
    /// leaves the unverified set and cannot be evicted.
    pub fn handshake_done(&self, verified: bool) {
        let mut inner = self.lock();
        if verified {
            inner.unverified.remove(&self.id);
        }
        if let Some(e) = inner.live.get_mut(&self.id) {
            e.verified = verified;
        }
    }

    /// Wraps the TLS stream so that it reads EOF once the gateway closes the connection, and
    /// starts the idle timer.
    pub fn into_stream(self, tls: TlsStream<TcpStream>, idle_timeout: Duration) -> TrackedStream {
        let streams = self
            .lock()
            .live
            .get(&self.id)
            .map(|e| (e.streams.subscribe(), e.close.clone()));
        if let Some((streams, close)) = streams {
            tokio::spawn(idle_watch(
                streams,
                close,
                self.closed.clone(),
                self.idle_closed.clone(),
                idle_timeout,
            ));
        }
        let mut rx = self.closed.clone();
        let closed = Box::pin(async move {
            let _ = rx.wait_for(Option::is_some).await;
        });
        TrackedStream {
            inner: tls,
            closed,
            close_seen: false,
            _reg: self,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.lock();
        if let Some(e) = inner.live.remove(&self.id) {
            if inner.by_addr.get(&e.addr) == Some(&self.id) {
                inner.by_addr.remove(&e.addr);
            }
            // Stops the idle watcher.
            e.close.send_if_modified(|r| {
                if r.is_none() {
                    *r = Some(CloseReason::Gone);
                    true
                } else {
                    false
                }
            });
        }
        inner.unverified.remove(&self.id);
    }
}

/// Closes the connection once it has had no open stream for `timeout`.
async fn idle_watch(
    mut streams: watch::Receiver<usize>,
    close: Arc<watch::Sender<Option<CloseReason>>>,
    mut closed: watch::Receiver<Option<CloseReason>>,
    idle_closed: Counter,
    timeout: Duration,
) {
    loop {
        let busy = *streams.borrow_and_update() > 0;
        tokio::select! {
            _ = closed.wait_for(Option::is_some) => return,
            r = streams.changed() => if r.is_err() { return },
            () = tokio::time::sleep(timeout), if !busy => {
                if *streams.borrow() == 0 {
                    let changed = close.send_if_modified(|r| {
                        if r.is_none() {
                            *r = Some(CloseReason::Idle);
                            true
                        } else {
                            false
                        }
                    });
                    if changed {
                        idle_closed.inc();
                        debug!("closing a connection with no open stream (idle timeout)");
                    }
                    return;
                }
            }
        }
    }
}

fn count(family: &Family<Reason, Counter>, why: CloseReason) -> Counter {
    family
        .get_or_create(&Reason {
            reason: why.label().into(),
        })
        .clone()
}

/// An open stream on a tracked connection (see [`Conns::open_stream`]).
#[derive(Debug)]
pub struct StreamGuard {
    streams: Option<Arc<watch::Sender<usize>>>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(s) = &self.streams {
            s.send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

/// A TLS connection the gateway can close: once told to, it reads EOF (the HTTP/2 server then
/// ends the connection) and refuses writes.
pub struct TrackedStream {
    inner: TlsStream<TcpStream>,
    closed: Pin<Box<dyn Future<Output = ()> + Send>>,
    close_seen: bool,
    _reg: Registration,
}

impl std::fmt::Debug for TrackedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedStream")
            .field("close_seen", &self.close_seen)
            .finish_non_exhaustive()
    }
}

impl TrackedStream {
    fn is_closed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.close_seen && self.closed.as_mut().poll(cx).is_ready() {
            self.close_seen = true;
        }
        self.close_seen
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_closed(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_closed(cx) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for TrackedStream {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn the_oldest_unverified_connection_is_evicted_and_verified_ones_are_kept() {
        let conns = Conns::new(
            ConnLimits {
                idle_timeout: Duration::from_secs(60),
                max_unverified: 2,
            },
            Family::default(),
        );
        let a = conns.register(addr(1));
        a.handshake_done(true);
        let b = conns.register(addr(2));
        let c = conns.register(addr(3));
        let d = conns.register(addr(4));
        // b was the oldest unverified one; a is verified and stays.
        assert_eq!(b.closed().await, CloseReason::Evicted);
        assert!(a.closed.borrow().is_none());
        assert!(c.closed.borrow().is_none() && d.closed.borrow().is_none());
        let s = conns.stats();
        assert_eq!((s.verified, s.evicted), (1, 1));
        drop(b);
        assert_eq!(conns.stats().unverified, 2);
        // Streams on unknown addresses are ignored.
        drop(conns.open_stream(Some(addr(9))));
        drop(conns.open_stream(None));
        drop((a, c, d));
        assert_eq!(
            conns.stats(),
            ConnStats {
                evicted: 1,
                ..ConnStats::default()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timer_runs_only_while_no_stream_is_open() {
        let conns = Conns::new(
            ConnLimits {
                idle_timeout: Duration::from_secs(10),
                max_unverified: 8,
            },
            Family::default(),
        );
        let r = conns.register(addr(1));
        let (streams, close) = {
            let inner = conns.lock();
            let e = &inner.live[&r.id];
            (e.streams.subscribe(), e.close.clone())
        };
        tokio::spawn(idle_watch(
            streams,
            close,
            r.closed.clone(),
            r.idle_closed.clone(),
            Duration::from_secs(10),
        ));
        let guard = conns.open_stream(Some(addr(1)));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            r.closed.borrow().is_none(),
            "closed while a stream was open"
        );
        drop(guard);
        assert_eq!(r.closed().await, CloseReason::Idle);
        assert_eq!(conns.stats().idle_closed, 1);
    }
}
