//! Registered resource kinds: what the double serves, and the default set the hub uses.

/// One resource kind served by the double (one group/version/plural).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceKind {
    /// API group, `""` for the core group.
    pub group: String,
    /// API version (`v1`, `v1alpha1`, ...).
    pub version: String,
    /// Kind (`ClusterGroupUpgrade`).
    pub kind: String,
    /// Plural resource name used in URLs (`clustergroupupgrades`).
    pub plural: String,
    /// Namespaced (`true`) or cluster-scoped (`false`).
    pub namespaced: bool,
    /// Whether the kind has a `/status` subresource (status isolation applies).
    pub status_subresource: bool,
    /// A built-in (non-CRD) kind: accepts strategic-merge patches (mapped to merge patches)
    /// and unconditional PUTs without `metadata.resourceVersion`, like the real apiserver.
    pub builtin: bool,
    /// This kind's watch-history length, overriding [`crate::Builder::history_limit`] (a real
    /// apiserver sizes its watch cache per resource too).
    pub history_limit: Option<usize>,
}

impl ResourceKind {
    fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Self {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            namespaced,
            status_subresource: false,
            builtin: false,
            history_limit: None,
        }
    }

    /// A namespaced kind (a CRD unless [`ResourceKind::builtin`] is called).
    pub fn namespaced(group: &str, version: &str, kind: &str, plural: &str) -> Self {
        Self::new(group, version, kind, plural, true)
    }

    /// A cluster-scoped kind.
    pub fn cluster_scoped(group: &str, version: &str, kind: &str, plural: &str) -> Self {
        Self::new(group, version, kind, plural, false)
    }

    /// Enables the `/status` subresource.
    #[must_use]
    pub fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    /// Keeps `n` events of this kind's watch history instead of the double's default.
    #[must_use]
    pub fn with_history_limit(mut self, n: usize) -> Self {
        self.history_limit = Some(n);
        self
    }

    /// Marks the kind as built-in (see [`ResourceKind::builtin`] field).
    #[must_use]
    pub fn builtin(mut self) -> Self {
        self.builtin = true;
        self
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` (or `plural` for the core group), as used in error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether this is one of the create-only review resources (TokenReview,
    /// SubjectAccessReview) whose answers the double scripts instead of storing
    /// ([`crate::KubeDouble::accept_token`]).
    pub fn is_review(&self) -> bool {
        let key = (self.group.as_str(), self.plural.as_str());
        key == crate::reviews::TOKEN_REVIEWS || key == crate::reviews::ACCESS_REVIEWS
    }

    /// The singular name used in discovery (lower-cased kind).
    pub fn singular(&self) -> String {
        self.kind.to_lowercase()
    }
}

/// The kinds the talm hub reads and writes; registered by default.
pub fn default_kinds() -> Vec<ResourceKind> {
    vec![
        ResourceKind::namespaced(
            "ran.openshift.io",
            "v1alpha1",
            "ClusterGroupUpgrade",
            "clustergroupupgrades",
        )
        .with_status(),
        ResourceKind::namespaced(
            "ran.openshift.io",
            "v1alpha1",
            "PreCachingConfig",
            "precachingconfigs",
        )
        .with_status(),
        ResourceKind::namespaced("talm.dev", "v1alpha1", "SpokeAgent", "spokeagents").with_status(),
        ResourceKind::cluster_scoped("talm.dev", "v1alpha1", "PrecacheBudget", "precachebudgets")
            .with_status(),
        ResourceKind::cluster_scoped(
            "cluster.open-cluster-management.io",
            "v1",
            "ManagedCluster",
            "managedclusters",
        )
        .with_status(),
        ResourceKind::namespaced(
            "cluster.open-cluster-management.io",
            "v1beta1",
            "Placement",
            "placements",
        )
        .with_status(),
        ResourceKind::namespaced(
            "policy.open-cluster-management.io",
            "v1",
            "Policy",
            "policies",
        )
        .with_status(),
        ResourceKind::namespaced(
            "policy.open-cluster-management.io",
            "v1",
            "PlacementBinding",
            "placementbindings",
        ),
        ResourceKind::namespaced(
            "view.open-cluster-management.io",
            "v1beta1",
            "ManagedClusterView",
            "managedclusterviews",
        )
        .with_status(),
        ResourceKind::namespaced(
            "action.open-cluster-management.io",
            "v1beta1",
            "ManagedClusterAction",
            "managedclusteractions",
        )
        .with_status(),
        ResourceKind::namespaced(
            "work.open-cluster-management.io",
            "v1",
            "ManifestWork",
            "manifestworks",
        )
        .with_status(),
        ResourceKind::namespaced(
            "work.open-cluster-management.io",
            "v1alpha1",
            "ManifestWorkReplicaSet",
            "manifestworkreplicasets",
        )
        .with_status(),
        ResourceKind::namespaced("", "v1", "ConfigMap", "configmaps").builtin(),
        ResourceKind::namespaced("", "v1", "Secret", "secrets").builtin(),
        ResourceKind::cluster_scoped("", "v1", "Namespace", "namespaces")
            .builtin()
            .with_status(),
        ResourceKind::namespaced("events.k8s.io", "v1", "Event", "events").builtin(),
        ResourceKind::namespaced("coordination.k8s.io", "v1", "Lease", "leases").builtin(),
        // Create-only, answered from the test's script (see `reviews`), never stored.
        ResourceKind::cluster_scoped("authentication.k8s.io", "v1", "TokenReview", "tokenreviews")
            .builtin(),
        ResourceKind::cluster_scoped(
            "authorization.k8s.io",
            "v1",
            "SubjectAccessReview",
            "subjectaccessreviews",
        )
        .builtin(),
    ]
}

/// OLM's Subscription and InstallPlan (`operators.coreos.com/v1alpha1`, namespaced, with
/// status): what a spoke's own API server serves to the agent's InstallPlan approval. Not in
/// [`default_kinds`] (the hub never reads them directly).
pub fn olm_kinds() -> Vec<ResourceKind> {
    vec![
        ResourceKind::namespaced(
            "operators.coreos.com",
            "v1alpha1",
            "Subscription",
            "subscriptions",
        )
        .with_status(),
        ResourceKind::namespaced(
            "operators.coreos.com",
            "v1alpha1",
            "InstallPlan",
            "installplans",
        )
        .with_status(),
    ]
}
