//! Managed-policy discovery and validation (docs/contract.md §1.3 and §3.2 steps 2–3):
//! missing, invalid, ambiguous and enforce policies; compliant-before-upgrade; Subscriptions
//! content; the ClusterVersion platform image; dependency order. Also two spec checks TALM does
//! not make (a negative `maxConcurrency`, a policy listed twice), refused with `Validated=False`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;
use talm_shared::api::IntOrString;
use talm_shared::api::cgu::{ClusterGroupUpgradeSpec, ManagedPolicyForUpgrade};
use talm_shared::api::rhacm::Policy;

use crate::graph::UpdateGraph;
use crate::snapshot::{Compliance, Snapshot};

/// One object of a policy's ConfigurationPolicy templates.
#[derive(Clone, Debug, PartialEq)]
pub struct TemplateObject {
    /// `musthave`, `mustonlyhave` or `mustnothave` (lower-cased).
    pub compliance_type: String,
    /// The object definition.
    pub object: Value,
}

impl TemplateObject {
    /// The object's `kind`.
    pub fn kind(&self) -> &str {
        self.object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    /// True for `mustnothave` objects, which talm never acts on.
    pub fn must_not_have(&self) -> bool {
        self.compliance_type == "mustnothave"
    }
}

/// Extracts the object templates of every ConfigurationPolicy in a policy, or the structural
/// error TALM reports as "invalid".
pub fn policy_objects(policy: &Policy) -> Result<Vec<TemplateObject>, String> {
    let mut out = Vec::new();
    for (i, t) in policy.spec.policy_templates.iter().enumerate() {
        let def = &t.object_definition;
        if def.is_null() {
            return Err(format!("policy-templates[{i}] has no objectDefinition"));
        }
        if def.get("kind").and_then(Value::as_str) != Some("ConfigurationPolicy") {
            continue;
        }
        if def.get("metadata").is_none() {
            return Err(format!(
                "policy-templates[{i}] objectDefinition has no metadata"
            ));
        }
        let Some(spec) = def.get("spec") else {
            return Err(format!(
                "policy-templates[{i}] objectDefinition has no spec"
            ));
        };
        let templates = spec.get("object-templates");
        let raw = spec.get("object-templates-raw");
        let entries: Vec<Value> = match (templates, raw) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(format!(
                    "policy-templates[{i}] must have exactly one of object-templates and object-templates-raw"
                ));
            }
            (Some(t), None) => t.as_array().cloned().unwrap_or_default(),
            (None, Some(r)) => parse_raw(r.as_str().unwrap_or(""))
                .map_err(|e| format!("policy-templates[{i}] object-templates-raw: {e}"))?,
        };
        for (j, e) in entries.iter().enumerate() {
            let Some(obj) = e.get("objectDefinition") else {
                return Err(format!(
                    "policy-templates[{i}] object-templates[{j}] has no objectDefinition"
                ));
            };
            let ct = e
                .get("complianceType")
                .and_then(Value::as_str)
                .unwrap_or("musthave")
                .to_ascii_lowercase();
            out.push(TemplateObject {
                compliance_type: ct,
                object: obj.clone(),
            });
        }
    }
    Ok(out)
}

/// Removes `{{ ... }}` template actions, then parses the YAML list of object templates (with
/// the shared reader's alias-expansion budget: the text comes from a policy author).
fn parse_raw(raw: &str) -> Result<Vec<Value>, String> {
    let stripped = strip_templates(raw);
    if stripped.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v = talm_shared::yaml::from_str_value(&stripped).map_err(|e| e.to_string())?;
    match v {
        Value::Array(a) => Ok(a),
        Value::Null => Ok(Vec::new()),
        _ => Err("not a list of object templates".to_string()),
    }
}

/// Removes every `{{ ... }}` from a string.
pub fn strip_templates(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        match rest[start..].find("}}") {
            Some(end) => rest = &rest[start + end + 2..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The result of policy validation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyValidation {
    /// Policies that still need work, in spec order.
    pub for_upgrade: Vec<ManagedPolicyForUpgrade>,
    /// Policies compliant on every selected cluster.
    pub compliant_before_upgrade: Vec<ManagedPolicyForUpgrade>,
    /// Name → namespace of every found policy.
    pub namespaces: BTreeMap<String, String>,
    /// Policy → JSON list of its Subscriptions (only policies that have any).
    pub content: BTreeMap<String, String>,
    /// Missing policies.
    pub missing: Vec<String>,
    /// Invalid policies.
    pub invalid: Vec<String>,
    /// Ambiguous policies and their namespaces.
    pub ambiguous: BTreeMap<String, BTreeSet<String>>,
    /// Names listed more than once in `managedPolicies` (nothing else is checked then).
    pub repeated: Vec<String>,
}

/// Why validation failed: the condition reason and message, and the event detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationFailure {
    /// Condition reason.
    pub reason: &'static str,
    /// Condition message (TALM's, trailing spaces included).
    pub message: String,
    /// Event kind of failure: `missing policies`, `invalid policies`, `ambiguous policies`,
    /// or empty when no validation-failure event is sent.
    pub event_kind: &'static str,
    /// Event list and annotation key.
    pub event_items: Vec<String>,
    /// Requeue interval in seconds.
    pub requeue_secs: u64,
}

#[derive(Serialize)]
struct SubscriptionContent<'a> {
    kind: &'a str,
    name: &'a str,
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    namespace: &'a str,
}

/// Discovers and classifies the managed policies (§3.2 step 2).
pub fn validate_policies(
    managed: &[String],
    clusters: &[String],
    snap: &Snapshot,
) -> PolicyValidation {
    let mut res = PolicyValidation {
        repeated: repeated_names(managed)
            .into_iter()
            .map(|(_, name)| name.to_string())
            .collect(),
        ..PolicyValidation::default()
    };
    if !res.repeated.is_empty() {
        return res;
    }
    for name in managed {
        let mut namespaces: BTreeSet<String> = BTreeSet::new();
        let mut enforce = false;
        let mut hub_error = false;
        for c in clusters {
            for child in snap.child_policies(c, name) {
                if !namespaces.contains(&child.parent_namespace) {
                    namespaces.insert(child.parent_namespace.clone());
                }
                enforce |= child.enforce;
                hub_error |= child.hub_template_error;
            }
        }
        if enforce {
            continue;
        }
        if namespaces.is_empty() {
            res.missing.push(name.clone());
            continue;
        }
        if namespaces.len() > 1 {
            res.ambiguous.insert(name.clone(), namespaces);
            continue;
        }
        let ns = namespaces.into_iter().next().unwrap_or_default();
        let Some(root) = snap.root_policy(&ns, name) else {
            res.missing.push(name.clone());
            continue;
        };
        if hub_error {
            res.invalid.push(name.clone());
            continue;
        }
        let objects = match policy_objects(&root.policy) {
            Ok(o) => o,
            Err(_) => {
                res.invalid.push(name.clone());
                continue;
            }
        };
        res.namespaces.insert(name.clone(), ns.clone());
        let has_status = objects
            .iter()
            .any(|o| o.object.get("status").is_some_and(|s| !s.is_null()));
        let all_compliant = clusters
            .iter()
            .all(|c| root.compliance(c) == Compliance::Compliant);
        let entry = ManagedPolicyForUpgrade {
            name: name.clone(),
            namespace: ns,
        };
        if !has_status && all_compliant {
            res.compliant_before_upgrade.push(entry);
            continue;
        }
        let subs: Vec<SubscriptionContent<'_>> = objects
            .iter()
            .filter(|o| o.kind() == "Subscription" && !o.must_not_have())
            .map(|o| SubscriptionContent {
                kind: "Subscription",
                name: o
                    .object
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                api_version: o
                    .object
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                namespace: o
                    .object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            })
            .collect();
        if !subs.is_empty()
            && let Ok(json) = serde_json::to_string(&subs)
        {
            res.content.insert(name.clone(), json);
        }
        res.for_upgrade.push(entry);
    }
    res
}

impl PolicyValidation {
    /// The failure TALM reports for this result, if any (invalid wins over missing; both win
    /// over ambiguous).
    pub fn failure(&self) -> Option<ValidationFailure> {
        if !self.repeated.is_empty() {
            return Some(ValidationFailure {
                reason: crate::conditions::reasons::DUPLICATE_MANAGED_POLICIES,
                message: format!(
                    "Managed policies listed more than once: {}",
                    crate::conditions::go_list(&self.repeated)
                ),
                event_kind: "duplicate policies",
                event_items: self.repeated.clone(),
                requeue_secs: 300,
            });
        }
        if !self.invalid.is_empty() || !self.missing.is_empty() {
            let (message, kind, items) = if !self.invalid.is_empty() {
                (
                    format!(
                        "Invalid managed policies: {} ",
                        crate::conditions::go_list(&self.invalid)
                    ),
                    "invalid policies",
                    self.invalid.clone(),
                )
            } else {
                (
                    format!(
                        "Missing managed policies: {} ",
                        crate::conditions::go_list(&self.missing)
                    ),
                    "missing policies",
                    self.missing.clone(),
                )
            };
            return Some(ValidationFailure {
                reason: crate::conditions::reasons::NOT_ALL_MANAGED_POLICIES_EXIST,
                message,
                event_kind: kind,
                event_items: items,
                requeue_secs: 60,
            });
        }
        if !self.ambiguous.is_empty() {
            let json = serde_json::to_string(&self.ambiguous).unwrap_or_default();
            return Some(ValidationFailure {
                reason: crate::conditions::reasons::AMBIGUOUS_MANAGED_POLICIES_NAMES,
                message: format!(
                    "Managed policy name should be unique, but was found in multiple namespaces: {json} "
                ),
                event_kind: "ambiguous policies",
                event_items: self.ambiguous.keys().cloned().collect(),
                requeue_secs: 60,
            });
        }
        None
    }
}

/// Each name that repeats an earlier entry, with the index of its first repeat; a name listed
/// three times is reported once.
pub fn repeated_names(names: &[String]) -> Vec<(usize, &str)> {
    let mut seen = BTreeSet::new();
    let mut reported = BTreeSet::new();
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if !seen.insert(name.as_str()) && reported.insert(name.as_str()) {
            out.push((i, name.as_str()));
        }
    }
    out
}

/// The spec checks TALM does not make, as a `Validated=False` failure: a negative
/// `remediationStrategy.maxConcurrency`, which TALM turns into one batch of every cluster (its
/// `Minimum=1` CRD marker is malformed, so the API server accepts any integer). Repeated
/// managed policies are found by [`validate_policies`].
///
/// Also talm's own: `spec.maintenanceWindows` that do not parse (a talm extension).
pub fn spec_failure(spec: &ClusterGroupUpgradeSpec) -> Option<ValidationFailure> {
    let max = spec.remediation_strategy.max_concurrency;
    if let Some(v) = &spec.remediation_strategy.max_failures
        && let Err(problem) = failure_budget(v, 0)
    {
        return Some(ValidationFailure {
            reason: crate::conditions::reasons::INVALID_MAX_FAILURES,
            message: format!("spec.remediationStrategy.maxFailures {problem}"),
            event_kind: "invalid maxFailures",
            event_items: vec![int_or_string_text(v)],
            requeue_secs: 300,
        });
    }
    if max < 0 {
        return Some(ValidationFailure {
            reason: crate::conditions::reasons::INVALID_MAX_CONCURRENCY,
            message: format!(
                "spec.remediationStrategy.maxConcurrency {}",
                max_concurrency_problem(max)
            ),
            event_kind: "invalid maxConcurrency",
            event_items: vec![max.to_string()],
            requeue_secs: 300,
        });
    }
    crate::windows::schedule(spec)
        .err()
        .map(|e| ValidationFailure {
            reason: crate::conditions::reasons::INVALID_MAINTENANCE_WINDOW,
            message: e.to_string(),
            event_kind: "invalid maintenanceWindows",
            event_items: vec![e.path],
            requeue_secs: 300,
        })
}

/// The failure budget (talm extension, `remediationStrategy.maxFailures`) for a CGU of
/// `clusters` clusters: a count as is, or a percentage of `clusters` rounded down. `Err` says
/// what is wrong with the value, after the field name.
pub fn failure_budget(v: &IntOrString, clusters: usize) -> Result<usize, String> {
    match v {
        IntOrString::Int(n) => usize::try_from(*n)
            .map_err(|_| format!("must be 0 or more, or a percentage such as \"10%\", not {n}")),
        IntOrString::String(s) => {
            let bad = || {
                format!("must be a whole number or a percentage from \"0%\" to \"100%\", not {s:?}")
            };
            let digits = s.strip_suffix('%').ok_or_else(bad)?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let pct: usize = digits.parse().map_err(|_| bad())?;
            if pct > 100 {
                return Err(bad());
            }
            Ok(clusters.saturating_mul(pct) / 100)
        }
    }
}

/// An int-or-string as the user wrote it.
fn int_or_string_text(v: &IntOrString) -> String {
    match v {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

/// What is wrong with a negative `maxConcurrency`, after the field name.
pub fn max_concurrency_problem(max: i32) -> String {
    format!("must be 0 (one batch with every cluster) or more, not {max}")
}

/// The ClusterVersion fields found in policies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ClusterVersionSpec {
    upstream: String,
    channel: String,
    version: String,
    image: String,
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// Finds the platform image named by the ClusterVersion objects of `policies` (§3.2 step 3):
/// `Ok(None)` when there is none (or it is templated and pre-caching is off), `Err(message)` on
/// TALM's InvalidPlatformImage errors.
pub fn platform_image(
    policies: &[&Policy],
    precaching: bool,
    graph: &dyn UpdateGraph,
) -> Result<Option<String>, String> {
    let mut found: Option<ClusterVersionSpec> = None;
    for p in policies {
        let Ok(objects) = policy_objects(p) else {
            continue;
        };
        for o in objects
            .iter()
            .filter(|o| o.kind() == "ClusterVersion" && !o.must_not_have())
        {
            let cv = ClusterVersionSpec {
                upstream: str_at(&o.object, "/spec/upstream").to_string(),
                channel: str_at(&o.object, "/spec/channel").to_string(),
                version: str_at(&o.object, "/spec/desiredUpdate/version").to_string(),
                image: str_at(&o.object, "/spec/desiredUpdate/image").to_string(),
            };
            match &mut found {
                None => found = Some(cv),
                Some(prev) => {
                    for (field, a, b) in [
                        ("upstream", &mut prev.upstream, &cv.upstream),
                        ("channel", &mut prev.channel, &cv.channel),
                        ("version", &mut prev.version, &cv.version),
                        ("image", &mut prev.image, &cv.image),
                    ] {
                        if a.is_empty() {
                            *a = b.clone();
                        } else if !b.is_empty() && a != b {
                            return Err(format!(
                                "platform image defined more then once with conflicting {field} values"
                            ));
                        }
                    }
                }
            }
        }
    }
    let Some(cv) = found else {
        return Ok(None);
    };
    let templated = [&cv.upstream, &cv.channel, &cv.version, &cv.image]
        .iter()
        .any(|s| s.contains("{{"));
    if templated {
        if precaching {
            return Err("templatized ClusterVersion fields not supported with precaching".into());
        }
        return Ok(None);
    }
    if !cv.image.is_empty() {
        return Ok(Some(cv.image));
    }
    if cv.upstream.is_empty() || cv.channel.is_empty() || cv.version.is_empty() {
        return Err(
            "policy with ClusterVersion must have upstream, channel, and version when image is not provided"
                .into(),
        );
    }
    graph
        .payload_for(&cv.upstream, &cv.channel, &cv.version)
        .map(Some)
}

/// Checks that no policy depends on one remediated later (§3.2 step 3).
pub fn dependency_order(
    for_upgrade: &[ManagedPolicyForUpgrade],
    snap: &Snapshot,
) -> Result<(), String> {
    for (i, p) in for_upgrade.iter().enumerate() {
        let Some(root) = snap.root_policy(&p.namespace, &p.name) else {
            continue;
        };
        for d in &root.policy.spec.dependencies {
            if !(d.kind.is_empty() || d.kind == "Policy") {
                continue;
            }
            let dns = if d.namespace.is_empty() {
                &p.namespace
            } else {
                &d.namespace
            };
            if let Some(j) = for_upgrade
                .iter()
                .position(|q| q.name == d.name && q.namespace == *dns)
                && j > i
            {
                return Err(format!(
                    "Managed Policy {} depends on {}, which is to be remediated later",
                    p.name, d.name
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(templates: Value) -> Policy {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"remediationAction": "inform", "policy-templates": templates}
        }))
        .unwrap()
    }

    fn cfg(objs: Value) -> Value {
        json!([{"objectDefinition": {
            "apiVersion": "policy.open-cluster-management.io/v1",
            "kind": "ConfigurationPolicy",
            "metadata": {"name": "c"},
            "spec": {"object-templates": objs}
        }}])
    }

    #[test]
    fn extracts_objects_and_skips_other_kinds() {
        let p = policy(cfg(json!([
            {"complianceType": "musthave", "objectDefinition": {"kind": "Subscription", "metadata": {"name": "s"}}},
            {"complianceType": "MustNotHave", "objectDefinition": {"kind": "Subscription"}}
        ])));
        let o = policy_objects(&p).unwrap();
        assert_eq!(o.len(), 2);
        assert!(!o[0].must_not_have());
        assert!(o[1].must_not_have());
    }

    #[test]
    fn structural_errors() {
        let both = policy(json!([{"objectDefinition": {
            "kind": "ConfigurationPolicy", "metadata": {}, "spec": {"object-templates": [], "object-templates-raw": ""}}}]));
        assert!(policy_objects(&both).unwrap_err().contains("exactly one"));
        let neither = policy(
            json!([{"objectDefinition": {"kind": "ConfigurationPolicy", "metadata": {}, "spec": {}}}]),
        );
        assert!(policy_objects(&neither).is_err());
        let nometa = policy(
            json!([{"objectDefinition": {"kind": "ConfigurationPolicy", "spec": {"object-templates": []}}}]),
        );
        assert!(policy_objects(&nometa).unwrap_err().contains("metadata"));
        let nodef = policy(cfg(json!([{"complianceType": "musthave"}])));
        assert!(
            policy_objects(&nodef)
                .unwrap_err()
                .contains("no objectDefinition")
        );
    }

    #[test]
    fn raw_templates_are_parsed_after_stripping() {
        let raw = "{{- range $i := (list 1) }}\n- complianceType: musthave\n  objectDefinition:\n    kind: Subscription\n    metadata:\n      name: sub-{{ $i }}\n{{- end }}\n";
        let p = policy(json!([{"objectDefinition": {
            "kind": "ConfigurationPolicy", "metadata": {"name": "x"}, "spec": {"object-templates-raw": raw}}}]));
        let o = policy_objects(&p).unwrap();
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].kind(), "Subscription");
        let bad = policy(json!([{"objectDefinition": {
            "kind": "ConfigurationPolicy", "metadata": {"name": "x"}, "spec": {"object-templates-raw": "- a: [unclosed"}}}]));
        assert!(policy_objects(&bad).is_err());
    }

    struct Graph;
    impl UpdateGraph for Graph {
        fn payload_for(&self, u: &str, c: &str, v: &str) -> Result<String, String> {
            if v == "4.9.8" {
                Ok("quay.io/ocp@sha256:abc".into())
            } else {
                Err(format!(
                    "unable to find version {v} on update graph on url {u}?channel={c}"
                ))
            }
        }
    }

    fn cv(spec: Value) -> Policy {
        policy(cfg(
            json!([{"complianceType": "musthave", "objectDefinition": {"kind": "ClusterVersion", "spec": spec}}]),
        ))
    }

    #[test]
    fn platform_image_rules() {
        let with_image = cv(json!({"desiredUpdate": {"image": "img:1"}}));
        assert_eq!(
            platform_image(&[&with_image], false, &Graph)
                .unwrap()
                .as_deref(),
            Some("img:1")
        );
        let graph = cv(
            json!({"upstream": "u", "channel": "stable-4.9", "desiredUpdate": {"version": "4.9.8"}}),
        );
        assert_eq!(
            platform_image(&[&graph], false, &Graph).unwrap().as_deref(),
            Some("quay.io/ocp@sha256:abc")
        );
        let unknown =
            cv(json!({"upstream": "u", "channel": "c", "desiredUpdate": {"version": "9.9"}}));
        assert_eq!(
            platform_image(&[&unknown], false, &Graph).unwrap_err(),
            "unable to find version 9.9 on update graph on url u?channel=c"
        );
        let incomplete = cv(json!({"channel": "c", "desiredUpdate": {"version": "4.9.8"}}));
        assert_eq!(
            platform_image(&[&incomplete], false, &Graph).unwrap_err(),
            "policy with ClusterVersion must have upstream, channel, and version when image is not provided"
        );
        let conflict = cv(json!({"desiredUpdate": {"image": "img:2"}}));
        assert_eq!(
            platform_image(&[&with_image, &conflict], false, &Graph).unwrap_err(),
            "platform image defined more then once with conflicting image values"
        );
        let templated =
            cv(json!({"upstream": "{{ .u }}", "channel": "c", "desiredUpdate": {"version": "1"}}));
        assert_eq!(platform_image(&[&templated], false, &Graph).unwrap(), None);
        assert_eq!(
            platform_image(&[&templated], true, &Graph).unwrap_err(),
            "templatized ClusterVersion fields not supported with precaching"
        );
    }

    #[test]
    fn failure_messages() {
        let v = PolicyValidation {
            missing: vec!["p1".into(), "p2".into()],
            ..Default::default()
        };
        assert_eq!(
            v.failure().unwrap().message,
            "Missing managed policies: [p1 p2] "
        );
        let v = PolicyValidation {
            missing: vec!["p1".into()],
            invalid: vec!["p".into()],
            ..Default::default()
        };
        assert_eq!(
            v.failure().unwrap().message,
            "Invalid managed policies: [p] "
        );
        let mut amb = BTreeMap::new();
        amb.insert(
            "p3".to_string(),
            ["default", "aaa", "bbb"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        );
        amb.insert(
            "p2".to_string(),
            ["bbb", "aaa"].iter().map(|s| s.to_string()).collect(),
        );
        let v = PolicyValidation {
            ambiguous: amb,
            ..Default::default()
        };
        let f = v.failure().unwrap();
        assert_eq!(f.reason, "AmbiguousManagedPoliciesNames");
        assert_eq!(
            f.message,
            r#"Managed policy name should be unique, but was found in multiple namespaces: {"p2":["aaa","bbb"],"p3":["aaa","bbb","default"]} "#
        );
    }

    #[test]
    fn repeated_names_are_reported_once_at_their_first_repeat() {
        let names: Vec<String> = ["a", "b", "a", "c", "a", "b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(repeated_names(&names), [(2, "a"), (5, "b")]);
        assert!(repeated_names(&names[..2]).is_empty());
        let v = validate_policies(&names, &[], &Snapshot::new());
        let f = v.failure().unwrap();
        assert_eq!(f.reason, "DuplicateManagedPolicies");
        assert_eq!(f.message, "Managed policies listed more than once: [a b]");
        assert!(v.missing.is_empty(), "nothing else is checked");
    }

    #[test]
    fn negative_max_concurrency_is_a_spec_failure() {
        let spec = |max: i32| -> ClusterGroupUpgradeSpec {
            serde_json::from_value(json!({"remediationStrategy": {"maxConcurrency": max}})).unwrap()
        };
        assert_eq!(spec_failure(&spec(0)), None);
        assert_eq!(spec_failure(&spec(5)), None);
        let f = spec_failure(&spec(-3)).unwrap();
        assert_eq!(f.reason, "InvalidMaxConcurrency");
        assert_eq!(
            f.message,
            "spec.remediationStrategy.maxConcurrency must be 0 (one batch with every cluster) or more, not -3"
        );
    }

    #[test]
    fn failure_budget_counts_and_percentages() {
        let i = IntOrString::Int;
        let s = |v: &str| IntOrString::String(v.into());
        assert_eq!(failure_budget(&i(0), 10), Ok(0));
        assert_eq!(failure_budget(&i(3), 10), Ok(3));
        assert_eq!(failure_budget(&s("10%"), 25), Ok(2), "2.5 rounds down");
        assert_eq!(failure_budget(&s("0%"), 25), Ok(0));
        assert_eq!(failure_budget(&s("100%"), 7), Ok(7));
        assert_eq!(failure_budget(&s("19%"), 5), Ok(0));
        for bad in ["10", "ten%", "%", "-5%", "101%", " 5%", "5.5%"] {
            let e = failure_budget(&s(bad), 10).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert_eq!(
            failure_budget(&i(-1), 10).unwrap_err(),
            "must be 0 or more, or a percentage such as \"10%\", not -1"
        );
    }

    #[test]
    fn bad_max_failures_is_a_spec_failure() {
        let spec = |v: Value| -> ClusterGroupUpgradeSpec {
            serde_json::from_value(
                json!({"remediationStrategy": {"maxConcurrency": 1, "maxFailures": v}}),
            )
            .unwrap()
        };
        assert_eq!(spec_failure(&spec(json!(2))), None);
        assert_eq!(spec_failure(&spec(json!("25%"))), None);
        let f = spec_failure(&spec(json!("lots"))).unwrap();
        assert_eq!(f.reason, "InvalidMaxFailures");
        assert_eq!(
            f.message,
            "spec.remediationStrategy.maxFailures must be a whole number or a percentage from \"0%\" to \"100%\", not \"lots\""
        );
    }

    #[test]
    fn bad_maintenance_windows_are_a_spec_failure() {
        let spec = |start: &str| -> ClusterGroupUpgradeSpec {
            serde_json::from_value(json!({
                "remediationStrategy": {"maxConcurrency": 1},
                "maintenanceWindows": [{"start": start, "duration": "4h"}],
            }))
            .unwrap()
        };
        assert_eq!(spec_failure(&spec("02:00")), None);
        let f = spec_failure(&spec("25:00")).unwrap();
        assert_eq!(f.reason, "InvalidMaintenanceWindow");
        assert_eq!(
            f.message,
            "spec.maintenanceWindows[0].start: \"25:00\" is not a time of day: the hour must be 00 to 23"
        );
        assert_eq!(f.event_items, ["spec.maintenanceWindows[0].start"]);
    }

    #[test]
    fn raw_templates_with_alias_bombs_are_invalid() {
        let mut raw = String::from(
            "- complianceType: musthave\n  objectDefinition:\n    kind: ConfigMap\n    data:\n      l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
        );
        for i in 1..10 {
            let p = format!("*l{}", i - 1);
            raw.push_str(&format!("      l{i}: &l{i} [{}]\n", vec![p; 9].join(", ")));
        }
        let p = policy(json!([{"objectDefinition": {
            "kind": "ConfigurationPolicy", "metadata": {"name": "x"}, "spec": {"object-templates-raw": raw}}}]));
        let e = policy_objects(&p).unwrap_err();
        assert!(e.contains("aliases expand the document beyond"), "{e}");
    }
}
