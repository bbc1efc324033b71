//! The in-memory object store: one `BTreeMap` per kind keyed by `(namespace, name)`, a global
//! monotonic resourceVersion counter, and a bounded per-kind event history for watches.
//!
//! Objects are kept as `Arc<serde_json::Value>`, so lists, watch events and history share them
//! instead of cloning. Every mutation goes through [`Store::commit`], which stamps the
//! server-owned metadata, records the watch event and wakes watchers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::error::ApiError;
use crate::kinds::ResourceKind;
use crate::patch::{self, PatchBody};
use crate::selectors::Filter;

/// Reads the wall clock; injectable through [`crate::Builder::clock`].
pub type Clock = Arc<dyn Fn() -> jiff::Timestamp + Send + Sync>;

/// The default clock. The double is a server, so it reads the system clock here, once.
#[allow(clippy::disallowed_methods)]
pub(crate) fn system_clock() -> Clock {
    Arc::new(jiff::Timestamp::now)
}

pub(crate) type ObjKey = (String, String);

/// Watch event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Object created.
    Added,
    /// Object changed.
    Modified,
    /// Object removed.
    Deleted,
}

impl EventType {
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One entry of the per-kind event history.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) rv: u64,
    pub(crate) ty: EventType,
    pub(crate) obj: Arc<Value>,
    /// The previous state (for selector transitions: MODIFIED out of a selector is DELETED).
    pub(crate) prev: Option<Arc<Value>>,
}

#[derive(Debug)]
pub(crate) struct KindState {
    pub(crate) spec: ResourceKind,
    pub(crate) objects: BTreeMap<ObjKey, Arc<Value>>,
    history: VecDeque<Arc<Record>>,
    /// Events with `rv <= compacted` are no longer in `history`.
    compacted: u64,
    notify: watch::Sender<u64>,
}

/// Result of a list.
#[derive(Debug)]
pub(crate) struct ListResult {
    pub(crate) items: Vec<Arc<Value>>,
    pub(crate) resource_version: u64,
    pub(crate) continue_token: Option<String>,
    pub(crate) remaining: Option<u64>,
}

/// Outcome of a DELETE.
#[derive(Debug)]
pub(crate) enum Deleted {
    /// Finalizers pending: `deletionTimestamp` set, object still there.
    Pending(Arc<Value>),
    /// Object removed.
    Gone(Arc<Value>),
}

/// Where a watch starts.
#[derive(Debug)]
pub(crate) struct WatchStart {
    pub(crate) initial: Vec<Arc<Value>>,
    pub(crate) cursor: u64,
    pub(crate) notify: watch::Receiver<u64>,
}

/// Delete preconditions (`DeleteOptions.preconditions`).
#[derive(Debug, Default, Clone)]
pub(crate) struct Preconditions {
    pub(crate) uid: Option<String>,
    pub(crate) resource_version: Option<String>,
}

/// The store; lives behind one mutex in [`crate::server::Shared`].
pub(crate) struct Store {
    kinds: Vec<KindState>,
    by_plural: HashMap<(String, String, String), usize>,
    by_kind: HashMap<(String, String, String), usize>,
    rv: u64,
    seq: u64,
    pub(crate) history_limit: usize,
    clock: Clock,
    pub(crate) require_namespaces: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("kinds", &self.kinds.len())
            .field("rv", &self.rv)
            .finish_non_exhaustive()
    }
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object)
        && let Some(o) = obj.as_object_mut()
    {
        o.insert("metadata".into(), Value::Object(Map::new()));
    }
    // `obj` is an object with an object `metadata` here (callers check `is_object` first).
    match obj.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(m) => m,
        None => unreachable_meta(),
    }
}

#[allow(clippy::panic)]
fn unreachable_meta() -> ! {
    panic!("kube-double bug: object without metadata after normalisation")
}

fn has_finalizers(obj: &Value) -> bool {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// Whether `a` and `b` differ outside `metadata` (and `status`, with a status subresource).
fn spec_changed(a: &Value, b: &Value, ignore_status: bool) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a != b;
    };
    let skip = |k: &str| {
        k == "metadata" || k == "apiVersion" || k == "kind" || (ignore_status && k == "status")
    };
    a.iter()
        .filter(|(k, _)| !skip(k))
        .any(|(k, v)| b.get(k) != Some(v))
        || b.iter()
            .filter(|(k, _)| !skip(k))
            .any(|(k, _)| !a.contains_key(k))
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns_subdomain(s)
}

fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain)
        && !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl Store {
    pub(crate) fn new(kinds: Vec<ResourceKind>, history_limit: usize, clock: Clock) -> Self {
        let mut store = Self {
            kinds: Vec::new(),
            by_plural: HashMap::new(),
            by_kind: HashMap::new(),
            rv: 0,
            seq: 0,
            history_limit: history_limit.max(1),
            clock,
            require_namespaces: false,
        };
        for k in kinds {
            store.register(k);
        }
        store
    }

    /// Registers (or replaces the definition of) a kind. Returns its id.
    pub(crate) fn register(&mut self, spec: ResourceKind) -> usize {
        let pk = (
            spec.group.clone(),
            spec.version.clone(),
            spec.plural.clone(),
        );
        if let Some(&id) = self.by_plural.get(&pk) {
            self.kinds[id].spec = spec;
            return id;
        }
        let id = self.kinds.len();
        self.by_kind.insert(
            (spec.group.clone(), spec.version.clone(), spec.kind.clone()),
            id,
        );
        self.by_plural.insert(pk, id);
        let (notify, _) = watch::channel(self.rv);
        self.kinds.push(KindState {
            spec,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: self.rv,
            notify,
        });
        id
    }

    pub(crate) fn kinds(&self) -> impl Iterator<Item = &ResourceKind> {
        self.kinds.iter().map(|k| &k.spec)
    }

    pub(crate) fn kind_id(&self, group: &str, version: &str, plural: &str) -> Option<usize> {
        self.by_plural
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .copied()
    }

    pub(crate) fn kind_id_by_kind(&self, group: &str, version: &str, kind: &str) -> Option<usize> {
        self.by_kind
            .get(&(group.to_string(), version.to_string(), kind.to_string()))
            .copied()
    }

    pub(crate) fn spec(&self, kid: usize) -> &ResourceKind {
        &self.kinds[kid].spec
    }

    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    pub(crate) fn object_count(&self, kid: usize) -> usize {
        self.kinds[kid].objects.len()
    }

    fn now(&self) -> String {
        let ts = (self.clock)();
        ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    }

    fn key(&self, kid: usize, ns: Option<&str>, name: &str) -> ObjKey {
        let ns = if self.kinds[kid].spec.namespaced {
            ns.unwrap_or("").to_string()
        } else {
            String::new()
        };
        (ns, name.to_string())
    }

    // ---------------------------------------------------------------- reads

    pub(crate) fn get(
        &self,
        kid: usize,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        let key = self.key(kid, ns, name);
        self.kinds[kid]
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&self.kinds[kid].spec.qualified(), name))
    }

    fn range<'a>(
        &'a self,
        kid: usize,
        ns: Option<&'a str>,
        after: Option<ObjKey>,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a Arc<Value>)> + 'a {
        let objects = &self.kinds[kid].objects;
        let lower = match (&after, ns) {
            (Some(k), _) => Bound::Excluded(k.clone()),
            (None, Some(ns)) => Bound::Included((ns.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        objects
            .range((lower, Bound::Unbounded))
            .take_while(move |(k, _)| ns.is_none_or(|ns| k.0 == ns))
    }

    pub(crate) fn list(
        &self,
        kid: usize,
        ns: Option<&str>,
        filter: &Filter,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListResult, ApiError> {
        let ns = if self.kinds[kid].spec.namespaced {
            ns
        } else {
            None
        };
        let (mut rv, after) = match continue_token.filter(|c| !c.is_empty()) {
            None => (self.rv, None),
            Some(tok) => {
                let bad = || ApiError::bad_request(format!("invalid continue token {tok:?}"));
                let (rv, rest) = tok.split_once(':').ok_or_else(bad)?;
                let rv: u64 = rv.parse().map_err(|_| bad())?;
                let (ns_hex, name_hex) = rest.split_once(':').ok_or_else(bad)?;
                let key = (
                    unhex(ns_hex).ok_or_else(bad)?,
                    unhex(name_hex).ok_or_else(bad)?,
                );
                (rv, Some(key))
            }
        };
        if rv == 0 {
            rv = self.rv;
        }
        let mut items = Vec::new();
        let mut iter = self
            .range(kid, ns, after)
            .filter(|(_, o)| filter.matches(o));
        let limit = limit.filter(|l| *l > 0);
        let mut last: Option<&ObjKey> = None;
        for (k, o) in iter.by_ref() {
            items.push(o.clone());
            last = Some(k);
            if limit.is_some_and(|l| items.len() >= l) {
                break;
            }
        }
        let remaining = iter.count() as u64;
        let (continue_token, remaining) = match (limit, last) {
            (Some(_), Some(k)) if remaining > 0 => (
                Some(format!("{rv}:{}:{}", hex(&k.0), hex(&k.1))),
                Some(remaining),
            ),
            _ => (None, None),
        };
        Ok(ListResult {
            items,
            resource_version: rv,
            continue_token,
            remaining,
        })
    }

    // ---------------------------------------------------------------- watch

    /// Starts a watch. `rv`: `None`/`"0"` → synthetic ADDED for the current state, then live;
    /// a number → events after it, or 410 Expired if they were compacted away.
    pub(crate) fn watch_start(
        &self,
        kid: usize,
        ns: Option<&str>,
        filter: &Filter,
        rv: Option<&str>,
        send_initial_events: bool,
    ) -> Result<WatchStart, ApiError> {
        let k = &self.kinds[kid];
        let notify = k.notify.subscribe();
        let from =
            match rv.filter(|s| !s.is_empty()) {
                None | Some("0") => None,
                Some(s) => Some(s.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version {s:?}"))
                })?),
            };
        if send_initial_events || from.is_none() {
            let ns = if k.spec.namespaced { ns } else { None };
            let initial = self
                .range(kid, ns, None)
                .filter(|(_, o)| filter.matches(o))
                .map(|(_, o)| o.clone())
                .collect();
            return Ok(WatchStart {
                initial,
                cursor: self.rv,
                notify,
            });
        }
        let from = from.unwrap_or(self.rv);
        if from < k.compacted {
            return Err(ApiError::expired(format!(
                "too old resource version: {from} ({})",
                k.compacted
            )));
        }
        Ok(WatchStart {
            initial: Vec::new(),
            cursor: from,
            notify,
        })
    }

    /// Events of kind `kid` after `cursor`, plus the resourceVersion up to which the caller is
    /// now complete. Err(410) if the cursor fell out of the bounded history.
    pub(crate) fn watch_poll(
        &self,
        kid: usize,
        cursor: u64,
    ) -> Result<(Vec<Arc<Record>>, u64), ApiError> {
        let k = &self.kinds[kid];
        if cursor < k.compacted {
            return Err(ApiError::expired(format!(
                "too old resource version: {cursor} ({})",
                k.compacted
            )));
        }
        let start = k.history.partition_point(|r| r.rv <= cursor);
        let recs = k.history.range(start..).cloned().collect();
        Ok((recs, self.rv.max(cursor)))
    }

    /// Drops the event history of every kind: watches resuming from an older resourceVersion
    /// get 410 Gone.
    pub(crate) fn compact(&mut self) {
        for k in &mut self.kinds {
            k.history.clear();
            k.compacted = self.rv;
        }
    }

    fn record(&mut self, kid: usize, rec: Record) {
        let k = &mut self.kinds[kid];
        let limit = k.spec.history_limit.unwrap_or(self.history_limit).max(1);
        let rv = rec.rv;
        k.history.push_back(Arc::new(rec));
        while k.history.len() > limit {
            if let Some(old) = k.history.pop_front() {
                k.compacted = old.rv;
            }
        }
        k.notify.send_replace(rv);
    }

    // ---------------------------------------------------------------- validation

    fn check_type(&self, kid: usize, obj: &Value, require: bool) -> Result<(), ApiError> {
        let spec = &self.kinds[kid].spec;
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let api_version = obj.get("apiVersion").and_then(Value::as_str);
        let kind = obj.get("kind").and_then(Value::as_str);
        match (api_version, kind) {
            (Some(a), Some(k)) if a != spec.api_version() || k != spec.kind => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({a}) / kind ({k}) does not match the expected API version ({}) / kind ({})",
                    spec.api_version(),
                    spec.kind
                )));
            }
            (Some(_), Some(_)) => {}
            _ if require => {
                return Err(ApiError::bad_request(
                    "Object 'Kind' or 'apiVersion' is missing in the request body",
                ));
            }
            _ => {}
        }
        if obj.get("metadata").is_some_and(|m| !m.is_object()) {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
        Ok(())
    }

    fn validate(&self, kid: usize, obj: &Value) -> Result<(), ApiError> {
        let spec = &self.kinds[kid].spec;
        let name = meta_str(obj, "name").unwrap_or("");
        let invalid = |cause: String| ApiError::invalid(&spec.kind, name, cause);
        let name_ok = if spec.kind == "Namespace" && spec.group.is_empty() {
            is_dns_label(name)
        } else {
            is_dns_subdomain(name)
        };
        if !name_ok {
            return Err(invalid(format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
            )));
        }
        let m = meta(obj);
        if let Some(labels) = m.and_then(|m| m.get("labels")).filter(|l| !l.is_null()) {
            let Some(labels) = labels.as_object() else {
                return Err(invalid("metadata.labels: must be a map of strings".into()));
            };
            for (k, v) in labels {
                let Some(v) = v.as_str() else {
                    return Err(invalid(format!(
                        "metadata.labels: Invalid value for {k:?}: must be a string"
                    )));
                };
                if !is_qualified_name(k) {
                    return Err(invalid(format!(
                        "metadata.labels: Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"
                    )));
                }
                if !is_label_value(v) {
                    return Err(invalid(format!(
                        "metadata.labels: Invalid value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters)"
                    )));
                }
            }
        }
        if let Some(ann) = m
            .and_then(|m| m.get("annotations"))
            .filter(|a| !a.is_null())
        {
            let ok = ann
                .as_object()
                .is_some_and(|a| a.iter().all(|(k, v)| v.is_string() && is_qualified_name(k)));
            if !ok {
                return Err(invalid(
                    "metadata.annotations: must be a map of strings with qualified-name keys"
                        .into(),
                ));
            }
        }
        if let Some(f) = m.and_then(|m| m.get("finalizers")).filter(|f| !f.is_null()) {
            let ok = f
                .as_array()
                .is_some_and(|a| a.iter().all(|x| x.as_str().is_some_and(is_qualified_name)));
            if !ok {
                return Err(invalid(
                    "metadata.finalizers: must be a list of qualified names".into(),
                ));
            }
        }
        Ok(())
    }

    fn check_namespace_exists(&self, ns: &str) -> Result<(), ApiError> {
        if !self.require_namespaces {
            return Ok(());
        }
        let Some(nsk) = self.kind_id("", "v1", "namespaces") else {
            return Ok(());
        };
        if self.kinds[nsk]
            .objects
            .contains_key(&(String::new(), ns.to_string()))
        {
            Ok(())
        } else {
            Err(ApiError::not_found("namespaces", ns))
        }
    }

    // ---------------------------------------------------------------- writes

    /// Creates an object. `keep_status`: fixture path (direct `put`), status is kept.
    pub(crate) fn create(
        &mut self,
        kid: usize,
        ns: Option<&str>,
        mut body: Value,
        dry_run: bool,
        keep_status: bool,
    ) -> Result<Arc<Value>, ApiError> {
        self.check_type(kid, &body, !keep_status)?;
        let spec = self.kinds[kid].spec.clone();
        if spec.namespaced {
            let url_ns = ns.filter(|n| !n.is_empty());
            let body_ns = meta_str(&body, "namespace");
            let ns = match (url_ns, body_ns) {
                (Some(u), Some(b)) if u != b => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(u), _) => u.to_string(),
                (None, Some(b)) if keep_status => b.to_string(),
                (None, _) => {
                    return Err(ApiError::bad_request(
                        "a namespace is required to create a namespaced object",
                    ));
                }
            };
            self.check_namespace_exists(&ns)?;
            meta_mut(&mut body).insert("namespace".into(), Value::String(ns));
        } else {
            meta_mut(&mut body).remove("namespace");
        }
        if meta_str(&body, "name").is_none() {
            match meta_str(&body, "generateName").map(str::to_string) {
                Some(prefix) => {
                    self.seq += 1;
                    let suffix: String =
                        format!("{:05x}", self.seq.wrapping_mul(2_654_435_761) & 0xfffff)
                            .chars()
                            .map(|c| {
                                if c.is_ascii_digit() {
                                    (b'b' + (c as u8 - b'0')) as char
                                } else {
                                    c
                                }
                            })
                            .collect();
                    meta_mut(&mut body)
                        .insert("name".into(), Value::String(format!("{prefix}{suffix}")));
                }
                None => {
                    return Err(ApiError::invalid(
                        &spec.kind,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            }
        }
        let name = meta_str(&body, "name").unwrap_or("").to_string();
        self.validate(kid, &body)?;
        let key = self.key(kid, meta_str(&body, "namespace"), &name);
        if self.kinds[kid].objects.contains_key(&key) {
            return Err(ApiError::already_exists(&spec.qualified(), &name));
        }
        if let Some(o) = body.as_object_mut() {
            o.insert("apiVersion".into(), Value::String(spec.api_version()));
            o.insert("kind".into(), Value::String(spec.kind.clone()));
            if spec.status_subresource && !keep_status {
                o.remove("status");
            }
            if spec.kind == "Namespace" && spec.group.is_empty() && !o.contains_key("status") {
                o.insert("status".into(), json!({"phase": "Active"}));
            }
        }
        self.seq += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.seq);
        let now = self.now();
        let m = meta_mut(&mut body);
        m.insert("uid".into(), Value::String(uid));
        m.insert("creationTimestamp".into(), Value::String(now));
        m.insert("generation".into(), json!(1));
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.remove("resourceVersion");
        if dry_run {
            return Ok(Arc::new(body));
        }
        self.rv += 1;
        let rv = self.rv;
        meta_mut(&mut body).insert("resourceVersion".into(), Value::String(rv.to_string()));
        let obj = Arc::new(body);
        self.kinds[kid].objects.insert(key, obj.clone());
        self.record(
            kid,
            Record {
                rv,
                ty: EventType::Added,
                obj: obj.clone(),
                prev: None,
            },
        );
        Ok(obj)
    }

    /// Stamps server-owned fields from `old` onto `new`, bumps generation, stores the result
    /// and records the event. A no-op write returns `old` unchanged (no new resourceVersion).
    fn commit(
        &mut self,
        kid: usize,
        old: &Arc<Value>,
        mut new: Value,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let spec = self.kinds[kid].spec.clone();
        if !new.is_object() {
            return Err(ApiError::invalid(
                &spec.kind,
                "",
                "the object must be a JSON object",
            ));
        }
        if let Some(o) = new.as_object_mut() {
            o.insert("apiVersion".into(), Value::String(spec.api_version()));
            o.insert("kind".into(), Value::String(spec.kind.clone()));
        }
        let old_meta = meta(old).cloned().unwrap_or_default();
        let name = old_meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        {
            let m = meta_mut(&mut new);
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
                "name",
                "namespace",
            ] {
                match old_meta.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
        }
        self.validate(kid, &new)?;
        if spec_changed(old, &new, spec.status_subresource) {
            let g = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        if new == **old {
            return Ok(old.clone());
        }
        if dry_run {
            return Ok(Arc::new(new));
        }
        let deleting = meta(&new).is_some_and(|m| m.contains_key("deletionTimestamp"));
        self.rv += 1;
        let rv = self.rv;
        meta_mut(&mut new).insert("resourceVersion".into(), Value::String(rv.to_string()));
        let key = self.key(kid, meta_str(&new, "namespace"), &name);
        let obj = Arc::new(new);
        let ty = if deleting && !has_finalizers(&obj) {
            self.kinds[kid].objects.remove(&key);
            EventType::Deleted
        } else {
            self.kinds[kid].objects.insert(key, obj.clone());
            EventType::Modified
        };
        self.record(
            kid,
            Record {
                rv,
                ty,
                obj: obj.clone(),
                prev: Some(old.clone()),
            },
        );
        Ok(obj)
    }

    fn check_rv(
        &self,
        kid: usize,
        old: &Value,
        want: Option<&str>,
        name: &str,
    ) -> Result<(), ApiError> {
        if let Some(want) = want.filter(|w| !w.is_empty())
            && Some(want) != meta_str(old, "resourceVersion")
        {
            return Err(ApiError::conflict(
                &self.kinds[kid].spec.qualified(),
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        Ok(())
    }

    fn check_uid(&self, kid: usize, old: &Value, new: &Value, name: &str) -> Result<(), ApiError> {
        if let Some(u) = meta_str(new, "uid")
            && Some(u) != meta_str(old, "uid")
        {
            return Err(ApiError::conflict(
                &self.kinds[kid].spec.qualified(),
                name,
                &format!(
                    "Precondition failed: UID in precondition: {u}, UID in object meta: {}",
                    meta_str(old, "uid").unwrap_or("")
                ),
            ));
        }
        Ok(())
    }

    fn check_identity(&self, old: &Value, new: &Value, name: &str) -> Result<(), ApiError> {
        if let Some(n) = meta_str(new, "name")
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(n) = meta_str(new, "namespace")
            && Some(n) != meta_str(old, "namespace")
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        Ok(())
    }

    /// Applies status isolation: main writes keep the old status, `/status` writes keep
    /// everything but the status.
    fn isolate(&self, kid: usize, old: &Value, mut new: Value, status: bool) -> Value {
        let sub = self.kinds[kid].spec.status_subresource;
        if status {
            // Everything but the status from `old` (without cloning the old status).
            let mut out = Map::new();
            if let Some(o) = old.as_object() {
                for (k, v) in o {
                    if k != "status" {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            if let Some(s) = new.as_object_mut().and_then(|n| n.remove("status")) {
                out.insert("status".into(), s);
            }
            Value::Object(out)
        } else {
            if sub
                && new.get("status") != old.get("status")
                && let Some(n) = new.as_object_mut()
            {
                match old.get("status") {
                    Some(s) => n.insert("status".into(), s.clone()),
                    None => n.remove("status"),
                };
            }
            new
        }
    }

    /// PUT (replace) of the object or of its status.
    pub(crate) fn update(
        &mut self,
        kid: usize,
        ns: Option<&str>,
        name: &str,
        body: Value,
        status: bool,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        self.check_type(kid, &body, true)?;
        let old = self.get(kid, ns, name)?;
        self.check_identity(&old, &body, name)?;
        let spec = &self.kinds[kid].spec;
        match meta_str(&body, "resourceVersion") {
            None if !spec.builtin => {
                return Err(ApiError::invalid(
                    &spec.kind,
                    name,
                    "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                ));
            }
            rv => self.check_rv(kid, &old, rv, name)?,
        }
        self.check_uid(kid, &old, &body, name)?;
        let new = self.isolate(kid, &old, body, status);
        self.commit(kid, &old, new, dry_run)
    }

    /// PATCH of the object or of its status. Returns the object and whether it was created
    /// (server-side apply on a missing object).
    pub(crate) fn patch(
        &mut self,
        kid: usize,
        ns: Option<&str>,
        name: &str,
        patch: &PatchBody,
        status: bool,
        dry_run: bool,
    ) -> Result<(Arc<Value>, bool), ApiError> {
        let spec = self.kinds[kid].spec.clone();
        let old = match self.get(kid, ns, name) {
            Ok(o) => o,
            Err(e) => {
                if let PatchBody::Apply {
                    config,
                    field_manager,
                    ..
                } = patch
                    && !status
                {
                    self.check_type(kid, config, true)?;
                    if let Some(n) = meta_str(config, "name")
                        && n != name
                    {
                        return Err(ApiError::bad_request(format!(
                            "the name of the object ({n}) does not match the name on the URL ({name})"
                        )));
                    }
                    let mut body = config.clone();
                    let fields = patch::config_fields(config, spec.status_subresource, false);
                    let entry = self.managed_entry(&spec, field_manager, &fields, false);
                    let m = meta_mut(&mut body);
                    m.insert("name".into(), Value::String(name.to_string()));
                    m.insert("managedFields".into(), Value::Array(vec![entry]));
                    return self
                        .create(kid, ns, body, dry_run, false)
                        .map(|o| (o, true));
                }
                return Err(e);
            }
        };
        let mut doc = (*old).clone();
        let mut managed = None;
        match patch {
            PatchBody::Merge(p) => patch::merge(&mut doc, p),
            PatchBody::Json(ops) => patch::json_patch(&mut doc, ops, &spec.kind)?,
            PatchBody::Apply {
                config,
                field_manager,
                force,
            } => {
                self.check_type(kid, config, true)?;
                self.check_identity(&old, config, name)?;
                managed = Some(self.apply_ownership(
                    &spec,
                    &old,
                    &mut doc,
                    config,
                    field_manager,
                    *force,
                    status,
                )?);
            }
        }
        self.check_type(kid, &doc, false)?;
        self.check_identity(&old, &doc, name)?;
        self.check_rv(kid, &old, meta_str(&doc, "resourceVersion"), name)?;
        self.check_uid(kid, &old, &doc, name)?;
        let mut new = self.isolate(kid, &old, doc, status);
        if let Some((managed_fields, changed_ownership)) = managed {
            // A no-op apply (same object, same field set) changes nothing, not even the
            // managedFields timestamp.
            if !changed_ownership && new == *old {
                return Ok((old, false));
            }
            meta_mut(&mut new).insert("managedFields".into(), managed_fields);
        }
        self.commit(kid, &old, new, dry_run).map(|o| (o, false))
    }

    fn managed_entry(
        &self,
        spec: &ResourceKind,
        manager: &str,
        fields: &patch::FieldSet,
        status: bool,
    ) -> Value {
        let mut e = json!({
            "manager": manager,
            "operation": "Apply",
            "apiVersion": spec.api_version(),
            "time": self.now(),
            "fieldsType": "FieldsV1",
            "fieldsV1": patch::to_fields_v1(fields),
        });
        if status && let Some(o) = e.as_object_mut() {
            o.insert("subresource".into(), json!("status"));
        }
        e
    }

    /// Server-side apply with per-manager field ownership: merges `config` into `doc`,
    /// removes fields `manager` applied before but no longer applies (unless another apply
    /// manager owns them), and reports conflicts with other apply managers unless `force`.
    /// Returns the new `managedFields` and whether this manager's field set changed.
    #[allow(clippy::too_many_arguments)]
    fn apply_ownership(
        &self,
        spec: &ResourceKind,
        old: &Value,
        doc: &mut Value,
        config: &Value,
        manager: &str,
        force: bool,
        status: bool,
    ) -> Result<(Value, bool), ApiError> {
        let sub = if status { "status" } else { "" };
        let fields = patch::config_fields(config, spec.status_subresource, status);
        let entries: Vec<Value> = meta(old)
            .and_then(|m| m.get("managedFields"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let is_apply = |e: &Value| e.get("operation").and_then(Value::as_str) == Some("Apply");
        let is_mine = |e: &Value| {
            is_apply(e)
                && e.get("manager").and_then(Value::as_str) == Some(manager)
                && e.get("subresource").and_then(Value::as_str).unwrap_or("") == sub
        };
        let set_of = |e: &Value| {
            e.get("fieldsV1")
                .map(patch::from_fields_v1)
                .unwrap_or_default()
        };
        let prev: patch::FieldSet = entries
            .iter()
            .find(|e| is_mine(e))
            .map(set_of)
            .unwrap_or_default();
        let others: Vec<(String, patch::FieldSet)> = entries
            .iter()
            .filter(|e| is_apply(e) && !is_mine(e))
            .map(|e| {
                (
                    e.get("manager")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    set_of(e),
                )
            })
            .collect();
        if !force {
            let mut conflicts = Vec::new();
            for path in &fields {
                for (other, set) in &others {
                    if set.contains(path)
                        && patch::get_path(old, path) != patch::get_path(config, path)
                    {
                        conflicts.push(format!(
                            "conflict with \"{other}\": {}",
                            patch::dotted(path)
                        ));
                    }
                }
            }
            if !conflicts.is_empty() {
                return Err(ApiError::conflict(
                    &spec.qualified(),
                    meta_str(old, "name").unwrap_or(""),
                    &format!(
                        "Apply failed with {} conflict(s): {}",
                        conflicts.len(),
                        conflicts.join(", ")
                    ),
                ));
            }
        }
        patch::merge(doc, config);
        for path in prev.difference(&fields) {
            if !others.iter().any(|(_, set)| set.contains(path)) {
                patch::remove_path(doc, path);
            }
        }
        let changed = prev != fields;
        let mut out: Vec<Value> = Vec::with_capacity(entries.len() + 1);
        let mut placed = false;
        for e in entries {
            if is_mine(&e) {
                if !placed {
                    out.push(if changed {
                        self.managed_entry(spec, manager, &fields, status)
                    } else {
                        e
                    });
                    placed = true;
                }
            } else {
                out.push(e);
            }
        }
        if !placed {
            out.push(self.managed_entry(spec, manager, &fields, status));
        }
        Ok((Value::Array(out), changed || !placed))
    }

    /// DELETE. With finalizers the object gets a `deletionTimestamp` and stays.
    pub(crate) fn delete(
        &mut self,
        kid: usize,
        ns: Option<&str>,
        name: &str,
        pre: &Preconditions,
        dry_run: bool,
    ) -> Result<Deleted, ApiError> {
        let old = self.get(kid, ns, name)?;
        let qualified = self.kinds[kid].spec.qualified();
        if let Some(u) = pre.uid.as_deref()
            && Some(u) != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(
                &qualified,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {u}, UID in object meta: {}",
                    meta_str(&old, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = pre.resource_version.as_deref()
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(
                &qualified,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&old, "resourceVersion").unwrap_or("")
                ),
            ));
        }
        if has_finalizers(&old) {
            if meta(&old).is_some_and(|m| m.contains_key("deletionTimestamp")) {
                return Ok(Deleted::Pending(old));
            }
            let mut new = (*old).clone();
            let now = self.now();
            let g = meta(&old)
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let m = meta_mut(&mut new);
            m.insert("deletionTimestamp".into(), Value::String(now));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            m.insert("generation".into(), json!(g + 1));
            if dry_run {
                return Ok(Deleted::Pending(Arc::new(new)));
            }
            // Bypass `commit`'s stamping (it would restore the old deletionTimestamp).
            self.rv += 1;
            let rv = self.rv;
            meta_mut(&mut new).insert("resourceVersion".into(), Value::String(rv.to_string()));
            let key = self.key(kid, ns, name);
            let obj = Arc::new(new);
            self.kinds[kid].objects.insert(key, obj.clone());
            self.record(
                kid,
                Record {
                    rv,
                    ty: EventType::Modified,
                    obj: obj.clone(),
                    prev: Some(old),
                },
            );
            return Ok(Deleted::Pending(obj));
        }
        if dry_run {
            return Ok(Deleted::Gone(old));
        }
        Ok(Deleted::Gone(self.remove(kid, ns, name).unwrap_or(old)))
    }

    /// Removes an object now, ignoring finalizers; records DELETED.
    pub(crate) fn remove(
        &mut self,
        kid: usize,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Arc<Value>> {
        let key = self.key(kid, ns, name);
        let old = self.kinds[kid].objects.remove(&key)?;
        self.rv += 1;
        let rv = self.rv;
        let mut gone = (*old).clone();
        meta_mut(&mut gone).insert("resourceVersion".into(), Value::String(rv.to_string()));
        let gone = Arc::new(gone);
        self.record(
            kid,
            Record {
                rv,
                ty: EventType::Deleted,
                obj: gone.clone(),
                prev: Some(old),
            },
        );
        Some(gone)
    }

    /// DELETE on a collection: deletes every matching object (finalizers honoured).
    pub(crate) fn delete_collection(
        &mut self,
        kid: usize,
        ns: Option<&str>,
        filter: &Filter,
        dry_run: bool,
    ) -> Result<Vec<Arc<Value>>, ApiError> {
        let ns = if self.kinds[kid].spec.namespaced {
            ns
        } else {
            None
        };
        let keys: Vec<ObjKey> = self
            .range(kid, ns, None)
            .filter(|(_, o)| filter.matches(o))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for (kns, name) in keys {
            let kns = (!kns.is_empty()).then_some(kns);
            match self.delete(
                kid,
                kns.as_deref(),
                &name,
                &Preconditions::default(),
                dry_run,
            )? {
                Deleted::Pending(o) | Deleted::Gone(o) => out.push(o),
            }
        }
        Ok(out)
    }

    /// Fixture upsert: creates or replaces the whole object, status included, with no
    /// preconditions; server-owned metadata is still stamped and watchers are notified.
    pub(crate) fn put(&mut self, kid: usize, mut body: Value) -> Result<Arc<Value>, ApiError> {
        self.check_type(kid, &body, false)?;
        let name = meta_str(&body, "name").unwrap_or("").to_string();
        let ns = meta_str(&body, "namespace").map(str::to_string);
        match self.get(kid, ns.as_deref(), &name) {
            Ok(old) => {
                meta_mut(&mut body).remove("resourceVersion");
                self.commit(kid, &old, body, false)
            }
            Err(_) => self.create(kid, ns.as_deref(), body, false, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip() {
        assert_eq!(unhex(&hex("ns-1")).as_deref(), Some("ns-1"));
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn names() {
        assert!(is_dns_subdomain("a.b-c"));
        assert!(!is_dns_subdomain("A"));
        assert!(is_qualified_name("ran.openshift.io/foo_bar"));
        assert!(!is_label_value("-x"));
    }
}
