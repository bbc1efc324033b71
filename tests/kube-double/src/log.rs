//! The request log and fault injection.

use std::time::Duration;

use crate::patch::PatchType;

/// The Kubernetes verb of a request (as RBAC would name it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection with `watch=true`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
    /// Discovery (`/api`, `/apis`, `/version`, ...).
    Discovery,
    /// Anything the double does not route.
    Unknown,
}

impl Verb {
    /// The RBAC verb string (`get`, `list`, `watch`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::DeleteCollection => "deletecollection",
            Self::Discovery => "discovery",
            Self::Unknown => "unknown",
        }
    }
}

/// One HTTP request seen by the double.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method (`GET`, `PATCH`, ...).
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string (without `?`), `""` if none.
    pub query: String,
    /// The Kubernetes verb.
    pub verb: Verb,
    /// API group of the addressed resource (`""` for core or discovery).
    pub group: String,
    /// API version of the addressed resource.
    pub version: String,
    /// Plural resource name (`""` for discovery).
    pub resource: String,
    /// Subresource (`status`), if any.
    pub subresource: Option<String>,
    /// Namespace from the URL, if any.
    pub namespace: Option<String>,
    /// Object name from the URL, if any.
    pub name: Option<String>,
    /// Patch type, for PATCH requests.
    pub patch_type: Option<PatchType>,
    /// `fieldManager` query parameter, if any.
    pub field_manager: Option<String>,
    /// The `Accept` header, if any.
    pub accept: Option<String>,
    /// HTTP status code returned (200 for a started watch, even if it then sends an ERROR
    /// event).
    pub status: u16,
}

impl RequestRecord {
    /// `resource` or `resource/subresource`, as RBAC rules spell it.
    pub fn rbac_resource(&self) -> String {
        match &self.subresource {
            Some(s) => format!("{}/{s}", self.resource),
            None => self.resource.clone(),
        }
    }
}

/// A fault-injection rule: requests matching every set criterion fail (or are delayed).
///
/// ```
/// # use talm_kube_double::{Fault, Verb};
/// // The next 2 status patches of ClusterGroupUpgrades answer 500.
/// let f = Fault::error(500).verb(Verb::Patch).resource("clustergroupupgrades").subresource("status").times(2);
/// ```
#[derive(Debug, Clone)]
pub struct Fault {
    pub(crate) code: Option<u16>,
    pub(crate) reason: String,
    pub(crate) message: String,
    pub(crate) delay: Option<Duration>,
    pub(crate) remaining: Option<usize>,
    pub(crate) verb: Option<Verb>,
    pub(crate) method: Option<String>,
    pub(crate) resource: Option<String>,
    pub(crate) subresource: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) path_contains: Option<String>,
}

fn default_reason(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

impl Fault {
    fn base(code: Option<u16>) -> Self {
        Self {
            code,
            reason: code.map(default_reason).unwrap_or("").to_string(),
            message: "injected fault".to_string(),
            delay: None,
            remaining: None,
            verb: None,
            method: None,
            resource: None,
            subresource: None,
            namespace: None,
            name: None,
            path_contains: None,
        }
    }

    /// Matching requests fail with HTTP `code` and a `Status` body (reason derived from the
    /// code; override with [`Fault::reason`]). Applies forever unless [`Fault::times`] is set.
    pub fn error(code: u16) -> Self {
        Self::base(Some(code))
    }

    /// Matching requests are delayed by `d`, then served normally.
    pub fn latency(d: Duration) -> Self {
        let mut f = Self::base(None);
        f.delay = Some(d);
        f
    }

    /// Also delay (before failing, for [`Fault::error`]).
    #[must_use]
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }

    /// Only the next `n` matching requests.
    #[must_use]
    pub fn times(mut self, n: usize) -> Self {
        self.remaining = Some(n);
        self
    }

    /// Status `reason`.
    #[must_use]
    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = reason.to_string();
        self
    }

    /// Status `message`.
    #[must_use]
    pub fn message(mut self, message: &str) -> Self {
        self.message = message.to_string();
        self
    }

    /// Only this verb.
    #[must_use]
    pub fn verb(mut self, verb: Verb) -> Self {
        self.verb = Some(verb);
        self
    }

    /// Only this HTTP method (`GET`, `PATCH`, ...).
    #[must_use]
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Only this plural resource.
    #[must_use]
    pub fn resource(mut self, plural: &str) -> Self {
        self.resource = Some(plural.to_string());
        self
    }

    /// Only this subresource (`status`).
    #[must_use]
    pub fn subresource(mut self, sub: &str) -> Self {
        self.subresource = Some(sub.to_string());
        self
    }

    /// Only this namespace.
    #[must_use]
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.to_string());
        self
    }

    /// Only this object name.
    #[must_use]
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Only paths containing `s`.
    #[must_use]
    pub fn path_contains(mut self, s: &str) -> Self {
        self.path_contains = Some(s.to_string());
        self
    }

    pub(crate) fn matches(&self, r: &RequestRecord) -> bool {
        self.remaining != Some(0)
            && self.verb.is_none_or(|v| v == r.verb)
            && self.method.as_deref().is_none_or(|m| m == r.method)
            && self.resource.as_deref().is_none_or(|x| x == r.resource)
            && self
                .subresource
                .as_deref()
                .is_none_or(|x| r.subresource.as_deref() == Some(x))
            && self
                .namespace
                .as_deref()
                .is_none_or(|x| r.namespace.as_deref() == Some(x))
            && self
                .name
                .as_deref()
                .is_none_or(|x| r.name.as_deref() == Some(x))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|x| r.path.contains(x))
    }
}
