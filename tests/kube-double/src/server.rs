//! HTTP layer: hyper 1 HTTP/1.1 server, URL routing to kinds, query parsing, JSON responses and
//! the chunked watch stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::error::{ApiError, success_status};
use crate::kinds::ResourceKind;
use crate::log::{Fault, RequestRecord, Verb};
use crate::patch::{PatchBody, PatchType};
use crate::reviews::Reviews;
use crate::selectors::{FieldSelector, Filter, LabelSelector};
use crate::store::{Deleted, EventType, Preconditions, Store};

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// State shared by the server tasks and the test handle.
pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    pub(crate) log: Mutex<Vec<RequestRecord>>,
    pub(crate) record_requests: AtomicBool,
    pub(crate) faults: Mutex<Vec<Fault>>,
    /// The scripted TokenReview / SubjectAccessReview answers.
    pub(crate) reviews: Mutex<Reviews>,
    pub(crate) bookmark_interval: Duration,
    /// `true` once shut down.
    pub(crate) shutdown: watch::Sender<bool>,
    /// Bumped to end every open watch stream.
    pub(crate) close_watches: watch::Sender<u64>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// Locks ignoring poisoning (a panicking test thread must not wedge the server).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }
}

/// Accept loop; ends on shutdown.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let mut conn_shutdown = shared.shutdown.subscribe();
        tokio::spawn(async move {
            let svc_shared = shared.clone();
            let svc = service_fn(move |req| {
                let shared = svc_shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = async { let _ = conn_shutdown.wait_for(|s| *s).await; } => {}
            }
        });
    }
}

// -------------------------------------------------------------------- responses

fn full(code: u16, bytes: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn json_response<T: Serialize + ?Sized>(code: u16, body: &T) -> Response<Body> {
    match serde_json::to_vec(body) {
        Ok(b) => full(code, b),
        Err(e) => error_response(&ApiError::new(500, "InternalError", e.to_string())),
    }
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

/// The form of the objects in a response, from `Accept` (`;as=...;g=meta.k8s.io;v=...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// The objects as stored.
    Full,
    /// `PartialObjectMetadata` of this `meta.k8s.io` version (objects and watch events).
    Metadata(&'static str),
    /// `PartialObjectMetadataList` of this `meta.k8s.io` version (lists).
    MetadataList(&'static str),
}

impl Output {
    /// The first media range of `accept` the double can serve: JSON, as stored or as
    /// metadata. No `Accept` (or `*/*`) is JSON as stored.
    fn from_accept(accept: &str) -> Result<Output, ApiError> {
        if accept.trim().is_empty() {
            return Ok(Output::Full);
        }
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            if !matches!(media, "application/json" | "application/*" | "*/*") {
                continue;
            }
            let (mut as_, mut group, mut version) = (None, None, None);
            for p in parts {
                match p.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                    Some(("as", v)) => as_ = Some(v),
                    Some(("g", v)) => group = Some(v),
                    Some(("v", v)) => version = Some(v),
                    _ => {}
                }
            }
            let Some(as_) = as_ else {
                return Ok(Output::Full);
            };
            let api_version = match (group, version) {
                (Some("meta.k8s.io"), Some("v1")) => "meta.k8s.io/v1",
                (Some("meta.k8s.io"), Some("v1beta1")) => "meta.k8s.io/v1beta1",
                _ => continue,
            };
            match as_ {
                "PartialObjectMetadata" => return Ok(Output::Metadata(api_version)),
                "PartialObjectMetadataList" => return Ok(Output::MetadataList(api_version)),
                _ => {}
            }
        }
        Err(ApiError::not_acceptable(
            accept,
            "no acceptable media range",
        ))
    }

    /// Checks the form fits the verb: lists take the list form, everything else the object
    /// form (as the apiserver, which refuses the mismatch).
    fn check(self, verb: Verb, accept: &str) -> Result<Self, ApiError> {
        let list = matches!(verb, Verb::List | Verb::DeleteCollection);
        match self {
            Output::Metadata(_) if list => Err(ApiError::not_acceptable(
                accept,
                "a list is served as PartialObjectMetadataList, not PartialObjectMetadata",
            )),
            Output::MetadataList(_) if !list => Err(ApiError::not_acceptable(
                accept,
                "only a list is served as PartialObjectMetadataList",
            )),
            o => Ok(o),
        }
    }

    /// One object in this form (a `Status` is never transformed).
    fn object(self, obj: &Value) -> std::borrow::Cow<'_, Value> {
        match self {
            Output::Metadata(api_version) | Output::MetadataList(api_version)
                if obj.get("kind").and_then(Value::as_str) != Some("Status") =>
            {
                std::borrow::Cow::Owned(json!({
                    "apiVersion": api_version,
                    "kind": "PartialObjectMetadata",
                    "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
                }))
            }
            _ => std::borrow::Cow::Borrowed(obj),
        }
    }

    /// A list's `apiVersion` and `kind` in this form.
    fn list_type(self, spec: &ResourceKind) -> (String, String) {
        match self {
            Output::Full => (spec.api_version(), format!("{}List", spec.kind)),
            Output::Metadata(v) | Output::MetadataList(v) => {
                (v.to_string(), "PartialObjectMetadataList".to_string())
            }
        }
    }
}

/// An object response in the requested form.
fn object_response(code: u16, obj: &Value, output: Output) -> Response<Body> {
    json_response(code, &*output.object(obj))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListMetaOut {
    resource_version: String,
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    continue_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining_item_count: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListOut<'a> {
    api_version: String,
    kind: String,
    metadata: ListMetaOut,
    items: Vec<std::borrow::Cow<'a, Value>>,
}

#[derive(Serialize)]
struct EventOut<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    object: &'a Value,
}

// -------------------------------------------------------------------- routing

#[derive(Debug)]
enum Target {
    Version,
    /// `/readyz`, `/livez`, `/healthz`: `ok` (scripted failures through [`crate::Fault`] with
    /// `path_contains("/readyz")`).
    Health,
    Api,
    Apis,
    Group(String),
    GroupVersion(String, String),
    Resource {
        kid: usize,
        ns: Option<String>,
        name: Option<String>,
        status: bool,
    },
}

struct Parsed {
    target: Result<Target, ApiError>,
    record: RequestRecord,
    query: HashMap<String, String>,
}

fn parse_request(
    shared: &Shared,
    method: &Method,
    path: &str,
    raw_query: &str,
    content_type: &str,
) -> Parsed {
    let query: HashMap<String, String> = form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let mut record = RequestRecord {
        method: method.as_str().to_string(),
        path: path.to_string(),
        query: raw_query.to_string(),
        verb: Verb::Unknown,
        group: String::new(),
        version: String::new(),
        resource: String::new(),
        subresource: None,
        namespace: None,
        name: None,
        patch_type: None,
        field_manager: query.get("fieldManager").cloned(),
        accept: None,
        status: 0,
    };
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["version"] => return discovery(record, query, Target::Version),
        ["readyz" | "livez" | "healthz"] => return discovery(record, query, Target::Health),
        ["api"] => return discovery(record, query, Target::Api),
        ["apis"] => return discovery(record, query, Target::Apis),
        ["apis", g] => return discovery(record, query, Target::Group(g.to_string())),
        ["api", v] => {
            return discovery(
                record,
                query,
                Target::GroupVersion(String::new(), v.to_string()),
            );
        }
        ["apis", g, v] => {
            return discovery(
                record,
                query,
                Target::GroupVersion(g.to_string(), v.to_string()),
            );
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            return Parsed {
                target: Err(ApiError::no_route()),
                record,
                query,
            };
        }
    };
    record.group = group.to_string();
    record.version = version.to_string();
    let ns_form = rest.first() == Some(&"namespaces")
        && rest.len() >= 3
        && !(rest.len() == 3 && matches!(rest[2], "status" | "finalize"));
    let (ns, plural, name, sub, extra) = if ns_form {
        (
            Some(rest[1]),
            rest[2],
            rest.get(3),
            rest.get(4),
            rest.len() > 5,
        )
    } else {
        (None, rest[0], rest.get(1), rest.get(2), rest.len() > 3)
    };
    record.resource = plural.to_string();
    record.namespace = ns.map(str::to_string);
    record.name = name.map(|s| s.to_string());
    record.subresource = sub.map(|s| s.to_string());
    record.verb = match (method, name.is_some()) {
        (&Method::GET, true) => Verb::Get,
        (&Method::GET, false) => {
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                Verb::Watch
            } else {
                Verb::List
            }
        }
        (&Method::POST, false) => Verb::Create,
        (&Method::PUT, true) => Verb::Update,
        (&Method::PATCH, true) => Verb::Patch,
        (&Method::DELETE, true) => Verb::Delete,
        (&Method::DELETE, false) => Verb::DeleteCollection,
        _ => Verb::Unknown,
    };
    if record.verb == Verb::Patch {
        record.patch_type = PatchType::from_content_type(content_type);
    }
    let target = (|| {
        if extra {
            return Err(ApiError::no_route());
        }
        let store = shared.store();
        let kid = store
            .kind_id(group, version, plural)
            .ok_or_else(ApiError::no_route)?;
        let spec = store.spec(kid);
        if (ns.is_some() && !spec.namespaced) || (name.is_some() && ns.is_none() && spec.namespaced)
        {
            return Err(ApiError::no_route());
        }
        let status = match sub {
            None => false,
            Some(&"status") if spec.status_subresource => true,
            Some(_) => return Err(ApiError::no_route()),
        };
        if record.verb == Verb::Unknown {
            return Err(ApiError::method_not_allowed(method.as_str()));
        }
        Ok(Target::Resource {
            kid,
            ns: ns.map(str::to_string),
            name: name.map(|s| s.to_string()),
            status,
        })
    })();
    Parsed {
        target,
        record,
        query,
    }
}

fn discovery(mut record: RequestRecord, query: HashMap<String, String>, t: Target) -> Parsed {
    record.verb = Verb::Discovery;
    Parsed {
        target: Ok(t),
        record,
        query,
    }
}

// -------------------------------------------------------------------- handler

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let header_str = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let content_type = header_str(header::CONTENT_TYPE);
    let accept = header_str(header::ACCEPT);
    let Parsed {
        target,
        mut record,
        query,
    } = parse_request(&shared, &method, &path, &raw_query, &content_type);
    record.accept = (!accept.is_empty()).then(|| accept.clone());

    // Fault injection.
    let fault = {
        let mut faults = lock(&shared.faults);
        faults.iter_mut().find(|f| f.matches(&record)).map(|f| {
            if let Some(n) = f.remaining.as_mut() {
                *n -= 1;
            }
            f.clone()
        })
    };
    let mut response = None;
    if let Some(f) = fault {
        if let Some(d) = f.delay {
            tokio::time::sleep(d).await;
        }
        if let Some(code) = f.code {
            response = Some(error_response(&ApiError::new(
                code,
                &f.reason,
                f.message.clone(),
            )));
        }
    }
    let response = match response {
        Some(r) => r,
        None => match target {
            Err(e) => error_response(&e),
            Ok(t) => {
                let body = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        return error_response(&ApiError::bad_request(format!(
                            "reading body: {e}"
                        )));
                    }
                };
                let output =
                    Output::from_accept(&accept).and_then(|o| o.check(record.verb, &accept));
                match output.and_then(|output| {
                    dispatch(
                        &shared,
                        &method,
                        t,
                        &query,
                        &record,
                        &content_type,
                        &body,
                        output,
                    )
                }) {
                    Ok(r) => r,
                    Err(e) => error_response(&e),
                }
            }
        },
    };
    record.status = response.status().as_u16();
    if shared.record_requests.load(Ordering::Relaxed) {
        lock(&shared.log).push(record);
    }
    response
}

fn q_bool(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

fn filter_from(q: &HashMap<String, String>) -> Result<Filter, ApiError> {
    Ok(Filter {
        labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        fields: FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?,
    })
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding body: {e}")))
}

/// Serves one resource request. Responses are serialized after the store's lock is released,
/// so a megabyte-sized object does not hold up every other request while it is written out.
#[allow(clippy::too_many_arguments)]
fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    target: Target,
    q: &HashMap<String, String>,
    record: &RequestRecord,
    content_type: &str,
    body: &[u8],
    output: Output,
) -> Result<Response<Body>, ApiError> {
    let (kid, ns, name, status) = match target {
        Target::Resource {
            kid,
            ns,
            name,
            status,
        } => (kid, ns, name, status),
        other => {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed(method.as_str()));
            }
            return discovery_response(&shared.store(), other);
        }
    };
    let ns = ns.as_deref();
    let dry_run = q.get("dryRun").is_some_and(|v| v == "All");
    let spec = shared.store().spec(kid).clone();
    if spec.is_review() {
        // Reviews are answered, not stored; the apiserver serves them for create only.
        if record.verb != Verb::Create {
            return Err(ApiError::method_not_allowed(method.as_str()));
        }
        let body = parse_body(body)?;
        let answer = lock(&shared.reviews)
            .answer(&spec.group, &spec.plural, body)
            .unwrap_or_else(|| Err(ApiError::no_route()))?;
        return Ok(object_response(201, &answer, output));
    }
    match record.verb {
        Verb::Get => {
            let obj = shared.store().get(kid, ns, name.as_deref().unwrap_or(""))?;
            Ok(object_response(200, &obj, output))
        }
        Verb::List => {
            let filter = filter_from(q)?;
            let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok());
            let (res, spec) = {
                let store = shared.store();
                let res = store.list(
                    kid,
                    ns,
                    &filter,
                    limit,
                    q.get("continue").map(String::as_str),
                )?;
                (res, store.spec(kid).clone())
            };
            let (api_version, kind) = output.list_type(&spec);
            let out = ListOut {
                api_version,
                kind,
                metadata: ListMetaOut {
                    resource_version: res.resource_version.to_string(),
                    continue_: res.continue_token,
                    remaining_item_count: res.remaining,
                },
                items: res.items.iter().map(|a| output.object(a)).collect(),
            };
            Ok(json_response(200, &out))
        }
        Verb::Watch => start_watch(shared, kid, ns, q, output),
        Verb::Create => {
            let body = parse_body(body)?;
            let obj = shared.store().create(kid, ns, body, dry_run, false)?;
            Ok(object_response(201, &obj, output))
        }
        Verb::Update => {
            let body = parse_body(body)?;
            let obj = shared.store().update(
                kid,
                ns,
                name.as_deref().unwrap_or(""),
                body,
                status,
                dry_run,
            )?;
            Ok(object_response(200, &obj, output))
        }
        Verb::Patch => {
            let ty = record
                .patch_type
                .ok_or_else(|| ApiError::unsupported_media_type(content_type))?;
            if ty == PatchType::StrategicMerge && !shared.store().spec(kid).builtin {
                return Err(ApiError::unsupported_media_type(content_type));
            }
            let patch = PatchBody::decode(
                ty,
                body,
                q.get("fieldManager").map(String::as_str),
                q_bool(q, "force"),
            )?;
            let (obj, created) = shared.store().patch(
                kid,
                ns,
                name.as_deref().unwrap_or(""),
                &patch,
                status,
                dry_run,
            )?;
            Ok(object_response(
                if created { 201 } else { 200 },
                &obj,
                output,
            ))
        }
        Verb::Delete => {
            let pre = delete_preconditions(body)?;
            let name = name.as_deref().unwrap_or("");
            let (deleted, spec) = {
                let mut store = shared.store();
                let spec = store.spec(kid).clone();
                (store.delete(kid, ns, name, &pre, dry_run)?, spec)
            };
            match deleted {
                Deleted::Pending(obj) => Ok(object_response(200, &obj, output)),
                Deleted::Gone(obj) => Ok(json_response(
                    200,
                    &success_status(json!({
                        "name": name,
                        "group": spec.group,
                        "kind": spec.plural,
                        "uid": obj.pointer("/metadata/uid"),
                    })),
                )),
            }
        }
        Verb::DeleteCollection => {
            let filter = filter_from(q)?;
            let mut store = shared.store();
            let spec = store.spec(kid).clone();
            let items = store.delete_collection(kid, ns, &filter, dry_run)?;
            let rv = store.resource_version();
            drop(store);
            let (api_version, kind) = output.list_type(&spec);
            let out = ListOut {
                api_version,
                kind,
                metadata: ListMetaOut {
                    resource_version: rv.to_string(),
                    continue_: None,
                    remaining_item_count: None,
                },
                items: items.iter().map(|a| output.object(a)).collect(),
            };
            Ok(json_response(200, &out))
        }
        Verb::Discovery | Verb::Unknown => Err(ApiError::method_not_allowed(method.as_str())),
    }
}

fn delete_preconditions(body: &[u8]) -> Result<Preconditions, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Preconditions::default());
    }
    let v = parse_body(body)?;
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    Ok(Preconditions {
        uid: s("/preconditions/uid"),
        resource_version: s("/preconditions/resourceVersion"),
    })
}

// -------------------------------------------------------------------- watch

fn event_line(ty: &str, obj: &Value) -> Option<Bytes> {
    let mut v = serde_json::to_vec(&EventOut { ty, object: obj }).ok()?;
    v.push(b'\n');
    Some(Bytes::from(v))
}

fn bookmark(spec: &ResourceKind, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end && let Some(m) = meta.as_object_mut() {
        m.insert(
            "annotations".into(),
            json!({"k8s.io/initial-events-end": "true"}),
        );
    }
    json!({"apiVersion": spec.api_version(), "kind": spec.kind, "metadata": meta})
}

fn start_watch(
    shared: &Arc<Shared>,
    kid: usize,
    ns: Option<&str>,
    q: &HashMap<String, String>,
    output: Output,
) -> Result<Response<Body>, ApiError> {
    let filter = filter_from(q)?;
    let send_initial = q_bool(q, "sendInitialEvents");
    let bookmarks = q_bool(q, "allowWatchBookmarks");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs);
    let (start, spec) = {
        let store = shared.store();
        let spec = store.spec(kid).clone();
        let start = store.watch_start(
            kid,
            ns,
            &filter,
            q.get("resourceVersion").map(String::as_str),
            send_initial,
        );
        (start, spec)
    };
    let ns = if spec.namespaced {
        ns.map(str::to_string)
    } else {
        None
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    let stream = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(|b| Ok::<_, Infallible>(Frame::data(b))))
    });
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let shared = shared.clone();
    tokio::spawn(async move {
        let start = match start {
            Ok(s) => s,
            Err(e) => {
                // Like the apiserver's watch cache: 200, then one ERROR event.
                if let Some(line) = event_line("ERROR", &e.to_status()) {
                    let _ = tx.send(line).await;
                }
                return;
            }
        };
        run_watch(
            shared,
            kid,
            spec,
            ns,
            filter,
            start,
            send_initial,
            bookmarks,
            timeout,
            output,
            tx,
        )
        .await;
    });
    Ok(resp)
}

#[allow(clippy::too_many_arguments)]
async fn run_watch(
    shared: Arc<Shared>,
    kid: usize,
    spec: ResourceKind,
    ns: Option<String>,
    filter: Filter,
    start: crate::store::WatchStart,
    send_initial: bool,
    bookmarks: bool,
    timeout: Option<Duration>,
    output: Output,
    tx: mpsc::Sender<Bytes>,
) {
    let event_line = |ty: &str, obj: &Value| event_line(ty, &output.object(obj));
    let crate::store::WatchStart {
        initial,
        mut cursor,
        mut notify,
    } = start;
    let mut shutdown = shared.shutdown.subscribe();
    let mut close = shared.close_watches.subscribe();
    close.borrow_and_update();
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let in_ns = |o: &Value| {
        ns.as_deref()
            .is_none_or(|ns| o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns))
    };
    for obj in &initial {
        let Some(line) = event_line("ADDED", obj) else {
            continue;
        };
        if tx.send(line).await.is_err() {
            return;
        }
    }
    drop(initial);
    if send_initial
        && let Some(line) = event_line("BOOKMARK", &bookmark(&spec, cursor, true))
        && tx.send(line).await.is_err()
    {
        return;
    }
    let mut complete_rv = cursor;
    loop {
        notify.borrow_and_update();
        let polled = shared.store().watch_poll(kid, cursor);
        match polled {
            Err(e) => {
                if let Some(line) = event_line("ERROR", &e.to_status()) {
                    let _ = tx.send(line).await;
                }
                return;
            }
            Ok((records, upto)) => {
                for rec in records {
                    cursor = rec.rv;
                    if !in_ns(&rec.obj) {
                        continue;
                    }
                    let now = filter.matches(&rec.obj);
                    let before = rec.prev.as_deref().is_some_and(|p| filter.matches(p));
                    let ty = match rec.ty {
                        EventType::Added if now => "ADDED",
                        EventType::Modified if now && before => "MODIFIED",
                        EventType::Modified if now => "ADDED",
                        EventType::Modified if before => "DELETED",
                        EventType::Deleted if now || before => "DELETED",
                        _ => continue,
                    };
                    let Some(line) = event_line(ty, &rec.obj) else {
                        continue;
                    };
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
                complete_rv = complete_rv.max(upto);
            }
        }
        let bookmark_sleep = tokio::time::sleep(shared.bookmark_interval);
        tokio::select! {
            changed = notify.changed() => if changed.is_err() { return },
            _ = bookmark_sleep, if bookmarks => {
                let Some(line) = event_line("BOOKMARK", &bookmark(&spec, complete_rv, false)) else { return };
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => return,
            _ = tx.closed() => return,
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            _ = close.changed() => return,
        }
    }
}

// -------------------------------------------------------------------- discovery

fn discovery_response(store: &Store, t: Target) -> Result<Response<Body>, ApiError> {
    let versions_of = |group: &str| {
        let mut vs: Vec<String> = store
            .kinds()
            .filter(|k| k.group == group)
            .map(|k| k.version.clone())
            .collect();
        vs.dedup();
        vs.sort();
        vs.dedup();
        vs
    };
    let group_json = |group: &str| {
        let vs = versions_of(group);
        let gv = |v: &String| json!({"groupVersion": format!("{group}/{v}"), "version": v});
        json!({
            "name": group,
            "versions": vs.iter().map(gv).collect::<Vec<_>>(),
            "preferredVersion": vs.first().map(gv),
        })
    };
    match t {
        Target::Health => Ok(full(200, b"ok".to_vec())),
        Target::Version => Ok(json_response(
            200,
            &json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-talm-kube-double",
                "gitCommit": "", "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
                "goVersion": "none", "compiler": "rustc", "platform": "linux/amd64",
            }),
        )),
        Target::Api => Ok(json_response(
            200,
            &json!({"kind": "APIVersions", "apiVersion": "v1", "versions": versions_of(""),
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        )),
        Target::Apis => {
            let mut groups: Vec<String> = store
                .kinds()
                .filter(|k| !k.group.is_empty())
                .map(|k| k.group.clone())
                .collect();
            groups.sort();
            groups.dedup();
            let groups: Vec<Value> = groups.iter().map(|g| group_json(g)).collect();
            Ok(json_response(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            ))
        }
        Target::Group(g) => {
            if versions_of(&g).is_empty() {
                return Err(ApiError::no_route());
            }
            let mut v = group_json(&g);
            if let Some(o) = v.as_object_mut() {
                o.insert("kind".into(), json!("APIGroup"));
                o.insert("apiVersion".into(), json!("v1"));
            }
            Ok(json_response(200, &v))
        }
        Target::GroupVersion(g, v) => {
            let kinds: Vec<&ResourceKind> = store
                .kinds()
                .filter(|k| k.group == g && k.version == v)
                .collect();
            if kinds.is_empty() {
                return Err(ApiError::no_route());
            }
            let mut resources = Vec::new();
            for k in kinds {
                let verbs = if k.is_review() {
                    json!(["create"])
                } else {
                    json!([
                        "create",
                        "delete",
                        "deletecollection",
                        "get",
                        "list",
                        "patch",
                        "update",
                        "watch"
                    ])
                };
                resources.push(json!({
                    "name": k.plural, "singularName": k.singular(), "namespaced": k.namespaced,
                    "kind": k.kind, "verbs": verbs,
                }));
                if k.status_subresource {
                    resources.push(json!({
                        "name": format!("{}/status", k.plural), "singularName": "",
                        "namespaced": k.namespaced, "kind": k.kind, "verbs": ["get", "patch", "update"],
                    }));
                }
            }
            let gv = if g.is_empty() { v } else { format!("{g}/{v}") };
            Ok(json_response(
                200,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
            ))
        }
        Target::Resource { .. } => Err(ApiError::no_route()),
    }
}

/// Binds 127.0.0.1:0 and returns the listener and its address.
pub(crate) async fn bind(ip: std::net::IpAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((ip, 0)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}
