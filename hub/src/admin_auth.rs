//! Authentication and authorization of the admin endpoints that expose fleet data
//! (`/metrics`, `/agents`, `/agents/{cluster}`), in-process, the way kube-rbac-proxy guards
//! an OpenShift operator's metrics.
//!
//! A request must carry `Authorization: Bearer <token>`. The token is reviewed (who is it?)
//! and the user it names is checked (may it `get` this path?) by an [`AdminAuthorizer`]; in
//! `talm-hub run` that is [`crate::operator::admin_auth::KubeAuthorizer`]: a TokenReview, then
//! a SubjectAccessReview of the non-resource URL (the request path, verb from the method).
//! The answers map to HTTP as kube-rbac-proxy's do:
//!
//! | outcome | HTTP |
//! |---|---|
//! | no or malformed `Authorization` header, token not authenticated | 401, `WWW-Authenticate: Bearer realm="talm-hub"` |
//! | authenticated, not allowed | 403, naming the user, verb and path |
//! | a review failed (API unreachable, error status) or took over [`REVIEW_TIMEOUT`] | 503; never allowed on error |
//! | allowed | the endpoint's answer |
//!
//! Both answers are cached, positive and negative alike, for [`CACHE_TTL`] (10 s) in caches
//! of at most [`CACHE_CAPACITY`] entries each, so a Prometheus scrape every 15–30 s costs at
//! most one TokenReview and one SubjectAccessReview per scrape and replica. Tokens are keyed
//! by their SHA-256, never kept in the clear. Failed reviews are not cached. The TTL is read
//! on the workspace's [`Clock`].
//!
//! The kubelet's probes (`/healthz`, `/readyz`) are not wrapped (see
//! [`crate::operator::cli::admin_router`]). `--admin-auth none` ([`AdminAuthMode::None`])
//! serves everything open, as before, for local runs.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use jiff::{SignedDuration, Timestamp};
use talm_shared::clock::Clock;

/// How `talm-hub run` guards its fleet-data admin endpoints (`--admin-auth`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AdminAuthMode {
    /// Bearer token → TokenReview → SubjectAccessReview (kube-rbac-proxy style).
    #[default]
    Kube,
    /// No authentication: every endpoint is open (local runs only).
    None,
}

/// How long a review answer (positive or negative) is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(10);
/// The most entries each answer cache holds.
pub const CACHE_CAPACITY: usize = 1024;
/// How long one review may take before the request is answered 503 (kube's client retries
/// an API server's 503 with backoff for minutes; a scrape should fail well within its own
/// timeout instead).
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// The user a token authenticates as (from the TokenReview's `status.user`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct UserInfo {
    /// `username`.
    pub username: String,
    /// `uid` (may be empty).
    pub uid: String,
    /// `groups`.
    pub groups: Vec<String>,
    /// `extra`.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// An authorization answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// The user may.
    Allowed,
    /// The user may not; `reason` is the reviewer's (may be empty).
    Denied {
        /// Why, as the reviewer said.
        reason: String,
    },
}

/// A review that could not be answered (never read as "allowed").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The TokenReview failed.
    #[error("TokenReview failed: {0}")]
    TokenReview(String),
    /// The SubjectAccessReview failed.
    #[error("SubjectAccessReview failed: {0}")]
    AccessReview(String),
    /// A review took longer than the guard waits.
    #[error("{what} took longer than {after:?}")]
    Timeout {
        /// `TokenReview` or `SubjectAccessReview`.
        what: &'static str,
        /// The limit.
        after: Duration,
    },
}

/// Who a token is and what that user may do: the seam between the HTTP guard and the API.
pub trait AdminAuthorizer: Send + Sync + 'static {
    /// The user `token` authenticates as; `None` when it does not authenticate.
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserInfo>, ReviewError>>;

    /// Whether `user` may `verb` the non-resource URL `path`.
    fn authorize<'a>(
        &'a self,
        user: &'a UserInfo,
        verb: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Access, ReviewError>>;
}

/// The outcome of guarding one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Let it through.
    Allowed(UserInfo),
    /// 401: no usable bearer token, or it did not authenticate.
    Unauthenticated(&'static str),
    /// 403.
    Forbidden {
        /// Who asked.
        user: String,
        /// The reviewer's reason (may be empty).
        reason: String,
    },
    /// 503: a review failed.
    Unavailable(ReviewError),
}

/// A map whose entries expire `ttl` after insertion, holding at most `capacity` entries.
#[derive(Debug)]
struct TtlCache<K, V> {
    entries: HashMap<K, (V, Timestamp)>,
    ttl: SignedDuration,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            ttl: SignedDuration::try_from(ttl).unwrap_or(SignedDuration::ZERO),
            capacity: capacity.max(1),
        }
    }

    /// The unexpired value for `k` at `now`.
    fn get(&mut self, k: &K, now: Timestamp) -> Option<V> {
        match self.entries.get(k) {
            Some((v, expires)) if now < *expires => Some(v.clone()),
            Some(_) => {
                self.entries.remove(k);
                None
            }
            None => None,
        }
    }

    /// Keeps `v` for `k` until `now + ttl`; when full, drops the expired entries, then the one
    /// closest to expiry.
    fn insert(&mut self, k: K, v: V, now: Timestamp) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&k) {
            self.entries.retain(|_, (_, expires)| now < *expires);
            if self.entries.len() >= self.capacity
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        let expires = now.saturating_add(self.ttl).unwrap_or(now);
        self.entries.insert(k, (v, expires));
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type DecisionKey = (UserInfo, String, String);

/// An [`AdminAuthorizer`] with the answer caches, as the HTTP guard uses it.
pub struct AdminAuth {
    authorizer: Arc<dyn AdminAuthorizer>,
    clock: Arc<dyn Clock>,
    users: Mutex<TtlCache<String, Option<UserInfo>>>,
    decisions: Mutex<TtlCache<DecisionKey, Access>>,
    timeout: Duration,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("users_cached", &lock(&self.users).len())
            .field("decisions_cached", &lock(&self.decisions).len())
            .finish_non_exhaustive()
    }
}

impl AdminAuth {
    /// Guards with `authorizer`, caching its answers for [`CACHE_TTL`] as read on `clock`.
    pub fn new(authorizer: Arc<dyn AdminAuthorizer>, clock: Arc<dyn Clock>) -> Self {
        Self::with_cache(authorizer, clock, CACHE_TTL, CACHE_CAPACITY)
    }

    /// [`AdminAuth::new`] with another TTL and capacity (zero TTL: nothing is reused).
    pub fn with_cache(
        authorizer: Arc<dyn AdminAuthorizer>,
        clock: Arc<dyn Clock>,
        ttl: Duration,
        capacity: usize,
    ) -> Self {
        Self {
            authorizer,
            clock,
            users: Mutex::new(TtlCache::new(ttl, capacity)),
            decisions: Mutex::new(TtlCache::new(ttl, capacity)),
            timeout: REVIEW_TIMEOUT,
        }
    }

    /// Waits at most `timeout` for each review (default [`REVIEW_TIMEOUT`]).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn bounded<T>(
        &self,
        what: &'static str,
        review: BoxFuture<'_, Result<T, ReviewError>>,
    ) -> Result<T, ReviewError> {
        tokio::time::timeout(self.timeout, review)
            .await
            .unwrap_or(Err(ReviewError::Timeout {
                what,
                after: self.timeout,
            }))
    }

    /// Whether the bearer `token` (if any) may `verb` `path`.
    pub async fn check(&self, token: Option<&str>, verb: &str, path: &str) -> Outcome {
        let Some(token) = token else {
            return Outcome::Unauthenticated("a bearer token is required");
        };
        let key = talm_gateway::enroll::secret_hash(token);
        let cached = lock(&self.users).get(&key, self.clock.now());
        let user = match cached {
            Some(u) => u,
            None => match self
                .bounded("TokenReview", self.authorizer.authenticate(token))
                .await
            {
                Ok(u) => {
                    lock(&self.users).insert(key, u.clone(), self.clock.now());
                    u
                }
                Err(e) => return Outcome::Unavailable(e),
            },
        };
        let Some(user) = user else {
            return Outcome::Unauthenticated("the bearer token did not authenticate");
        };
        let key = (user.clone(), verb.to_string(), path.to_string());
        let cached = lock(&self.decisions).get(&key, self.clock.now());
        let access = match cached {
            Some(a) => a,
            None => match self
                .bounded(
                    "SubjectAccessReview",
                    self.authorizer.authorize(&user, verb, path),
                )
                .await
            {
                Ok(a) => {
                    lock(&self.decisions).insert(key, a.clone(), self.clock.now());
                    a
                }
                Err(e) => return Outcome::Unavailable(e),
            },
        };
        match access {
            Access::Allowed => Outcome::Allowed(user),
            Access::Denied { reason } => Outcome::Forbidden {
                user: user.username,
                reason,
            },
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive); `None`
/// when the header is missing, not Bearer, or empty.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The RBAC verb of an HTTP method on a non-resource URL (as the API server names them).
pub fn verb_of(method: &Method) -> &'static str {
    match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => "get",
        Method::POST => "post",
        Method::PUT => "put",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

/// `router` with every route behind `auth`.
pub fn protect(router: Router, auth: Arc<AdminAuth>) -> Router {
    router.layer(middleware::from_fn_with_state(auth, guard))
}

async fn guard(State(auth): State<Arc<AdminAuth>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let verb = verb_of(req.method());
    match auth.check(bearer_token(req.headers()), verb, &path).await {
        Outcome::Allowed(_) => next.run(req).await,
        Outcome::Unauthenticated(why) => {
            tracing::debug!(%path, why, "admin endpoint: 401");
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, r#"Bearer realm="talm-hub""#)],
                format!("Unauthorized: {why}\n"),
            )
                .into_response()
        }
        Outcome::Forbidden { user, reason } => {
            tracing::info!(%user, verb, %path, %reason, "admin endpoint: 403");
            let because = if reason.is_empty() {
                String::new()
            } else {
                format!(": {reason}")
            };
            (
                StatusCode::FORBIDDEN,
                format!("Forbidden (user={user}, verb={verb}, path={path}){because}\n"),
            )
                .into_response()
        }
        Outcome::Unavailable(e) => {
            tracing::warn!(%path, error = %e, "admin endpoint: 503, cannot review the request");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot authorize the request now ({e})\n"),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::HeaderValue;
    use talm_shared::clock::ManualClock;

    use super::*;

    /// Scripted answers, counting the reviews asked for.
    #[derive(Default)]
    struct Script {
        fail: std::sync::atomic::AtomicBool,
        hang: std::sync::atomic::AtomicBool,
        authn: AtomicUsize,
        authz: AtomicUsize,
    }

    impl AdminAuthorizer for Script {
        fn authenticate<'a>(
            &'a self,
            token: &'a str,
        ) -> BoxFuture<'a, Result<Option<UserInfo>, ReviewError>> {
            self.authn.fetch_add(1, Ordering::SeqCst);
            let fail = self.fail.load(Ordering::SeqCst);
            Box::pin(async move {
                if fail {
                    return Err(ReviewError::TokenReview("down".into()));
                }
                Ok(token.strip_prefix("tok-").map(|u| UserInfo {
                    username: u.into(),
                    ..UserInfo::default()
                }))
            })
        }

        fn authorize<'a>(
            &'a self,
            user: &'a UserInfo,
            _verb: &'a str,
            path: &'a str,
        ) -> BoxFuture<'a, Result<Access, ReviewError>> {
            self.authz.fetch_add(1, Ordering::SeqCst);
            let hang = self.hang.load(Ordering::SeqCst);
            Box::pin(async move {
                if hang {
                    futures::future::pending::<()>().await;
                }
                Ok(if user.username == "reader" && path == "/metrics" {
                    Access::Allowed
                } else {
                    Access::Denied {
                        reason: "no rule".into(),
                    }
                })
            })
        }
    }

    fn auth(ttl: Duration, capacity: usize) -> (Arc<Script>, Arc<ManualClock>, AdminAuth) {
        let script = Arc::new(Script::default());
        let clock = Arc::new(ManualClock::at_unix(1_000_000));
        let a = AdminAuth::with_cache(script.clone(), clock.clone(), ttl, capacity);
        (script, clock, a)
    }

    fn counts(s: &Script) -> (usize, usize) {
        (
            s.authn.load(Ordering::SeqCst),
            s.authz.load(Ordering::SeqCst),
        )
    }

    #[tokio::test]
    async fn outcomes_follow_the_reviews() {
        let (_, _, a) = auth(CACHE_TTL, 16);
        assert!(matches!(
            a.check(None, "get", "/metrics").await,
            Outcome::Unauthenticated(_)
        ));
        assert!(matches!(
            a.check(Some("junk"), "get", "/metrics").await,
            Outcome::Unauthenticated(_)
        ));
        assert_eq!(
            a.check(Some("tok-other"), "get", "/metrics").await,
            Outcome::Forbidden {
                user: "other".into(),
                reason: "no rule".into()
            }
        );
        assert!(matches!(
            a.check(Some("tok-reader"), "get", "/metrics").await,
            Outcome::Allowed(u) if u.username == "reader"
        ));
        assert!(matches!(
            a.check(Some("tok-reader"), "get", "/agents").await,
            Outcome::Forbidden { .. }
        ));
    }

    #[tokio::test]
    async fn answers_are_reused_within_the_ttl_and_asked_again_after() {
        let (script, clock, a) = auth(Duration::from_secs(10), 16);
        for _ in 0..3 {
            assert!(matches!(
                a.check(Some("tok-reader"), "get", "/metrics").await,
                Outcome::Allowed(_)
            ));
            assert!(matches!(
                a.check(Some("junk"), "get", "/metrics").await,
                Outcome::Unauthenticated(_)
            ));
        }
        // One review of each token, one access review: negatives are cached too.
        assert_eq!(counts(&script), (2, 1));
        clock.advance(SignedDuration::from_secs(9));
        a.check(Some("tok-reader"), "get", "/metrics").await;
        assert_eq!(counts(&script), (2, 1), "still within the TTL");
        clock.advance(SignedDuration::from_secs(1));
        a.check(Some("tok-reader"), "get", "/metrics").await;
        assert_eq!(counts(&script), (3, 2), "expired at the TTL");
    }

    #[tokio::test]
    async fn failures_are_unavailable_and_not_cached() {
        let (script, _, a) = auth(CACHE_TTL, 16);
        script.fail.store(true, Ordering::SeqCst);
        assert!(matches!(
            a.check(Some("tok-reader"), "get", "/metrics").await,
            Outcome::Unavailable(ReviewError::TokenReview(_))
        ));
        script.fail.store(false, Ordering::SeqCst);
        assert!(matches!(
            a.check(Some("tok-reader"), "get", "/metrics").await,
            Outcome::Allowed(_)
        ));
        assert_eq!(counts(&script).0, 2);
    }

    #[tokio::test]
    async fn a_review_that_hangs_is_unavailable_after_the_timeout() {
        let (script, _, a) = auth(CACHE_TTL, 16);
        let a = a.with_timeout(Duration::from_millis(20));
        script.hang.store(true, Ordering::SeqCst);
        assert!(matches!(
            a.check(Some("tok-reader"), "get", "/metrics").await,
            Outcome::Unavailable(ReviewError::Timeout {
                what: "SubjectAccessReview",
                ..
            })
        ));
        script.hang.store(false, Ordering::SeqCst);
        assert!(matches!(
            a.check(Some("tok-reader"), "get", "/metrics").await,
            Outcome::Allowed(_)
        ));
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let mut c = TtlCache::new(Duration::from_secs(10), 3);
        for i in 0..10i64 {
            c.insert(
                i,
                i,
                now.saturating_add(SignedDuration::from_millis(i)).unwrap(),
            );
            assert!(c.len() <= 3);
        }
        // The newest stay; the ones closest to expiry went first.
        assert_eq!(c.get(&9, now), Some(9));
        assert_eq!(c.get(&0, now), None);
        // Expired entries are dropped before live ones.
        let later = now.saturating_add(SignedDuration::from_secs(60)).unwrap();
        c.insert(100, 100, later);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn bearer_tokens_and_verbs() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        for (v, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer  abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer ", None),
            ("Bearer", None),
        ] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            assert_eq!(bearer_token(&h), want, "{v:?}");
        }
        assert_eq!(verb_of(&Method::GET), "get");
        assert_eq!(verb_of(&Method::POST), "post");
    }
}
