//! The deployment manifests under `deploy/` against the code they deploy:
//!
//! - every YAML file parses (multi-document aware) and every object names itself;
//! - the kustomize base and overlays, and the overlays with their optional patches, render with
//!   the real kustomize (`kubectl kustomize`; a missing kubectl fails the test, naming what to
//!   install), and the rendered objects are consistent (Services, probes, Route, monitoring);
//! - the Deployments pass restricted-v2 and their args and env names are real flags of
//!   `talm-hub run` / `talm-hub gateway` (from clap's own introspection);
//! - the CRDs in the OLM bundle equal `deploy/crds/`, which equal `talm-hub crds`;
//! - the CSV's permissions equal the RBAC manifests, its images and deployments equal
//!   `deploy/base/core`, its owned CRDs are the bundle's, and its descriptors name real fields;
//! - the PrometheusRule's expressions name only metrics the hub and gateway export;
//! - the ClusterRole and Role cover exactly the API calls the operator makes: the operator runs
//!   a representative rollout (leader election, pre-caching, backup, actions, a 409, an
//!   authorized scrape of the admin endpoints, deletion) and a ManifestWork rollout against
//!   the Kubernetes API double, whose request log gives the calls;
//! - the ClusterRole talm-metrics-reader (who may read /metrics and /agents) ships with the
//!   kustomize base and the OLM bundle, and is bound to the ServiceAccount that scrapes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod operator_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::CommandFactory;
use operator_support::{GatewayHub, find_condition};
use serde_json::{Value, json};
use talm_gateway::GatewayConfig;
use talm_gateway::enroll::secret_hash;
use talm_gateway::store::TokenRecord;
use talm_hub::admin_auth::AdminAuth;
use talm_hub::operator::admin_auth::KubeAuthorizer;
use talm_hub::operator::agents::{GatewaySettings, ServingTls, secrets};
use talm_hub::operator::cli::admin_router;
use talm_hub::operator::{Config, LeaderElection, LeaseTiming, Operator};
use talm_hub::plan::graph::FileUpdateGraph;
use talm_kube_double::{Fault, KubeDouble, Verb};
use talm_shared::api::cgu::ClusterGroupUpgrade;
use talm_shared::clock::{Clock, SystemClock};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/talm");
/// The namespace the manifests install into (and the leader Lease's).
const NAMESPACE: &str = "talm-system";
/// The agent image the bundle and `talm-hub agents machineconfig` refer to.
const AGENT_IMAGE: &str = "quay.io/talm/talm-agent:0.1.0";

fn deploy_dir() -> PathBuf {
    Path::new(REPO).join("deploy")
}

/// Every non-empty document of a YAML file.
fn yaml_docs(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn docs(rel: &str) -> Vec<Value> {
    yaml_docs(&deploy_dir().join(rel)).unwrap()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn kind(o: &Value) -> &str {
    s(o, "/kind")
}

fn name(o: &Value) -> &str {
    s(o, "/metadata/name")
}

fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
}

fn find<'a>(objs: &'a [Value], k: &str, n: &str) -> &'a Value {
    objs.iter()
        .find(|o| kind(o) == k && name(o) == n)
        .unwrap_or_else(|| panic!("no {k} {n} in {:?}", ids(objs)))
}

fn ids(objs: &[Value]) -> Vec<String> {
    objs.iter()
        .map(|o| format!("{}/{}", kind(o), name(o)))
        .collect()
}

// ----- every YAML parses ---------------------------------------------------------------------

#[test]
fn every_yaml_file_under_deploy_parses() {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    let mut problems = Vec::new();
    let mut objects = 0;
    for f in &files {
        let rel = f.strip_prefix(REPO).unwrap_or(f).display().to_string();
        let docs = match yaml_docs(f) {
            Ok(d) => d,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        if docs.is_empty() {
            problems.push(format!("{rel}: no documents"));
        }
        for (i, d) in docs.iter().enumerate() {
            match d {
                // JSON 6902 patches are lists of operations.
                Value::Array(ops) => {
                    for op in ops {
                        if !matches!(s(op, "/op"), "add" | "replace" | "remove")
                            || !s(op, "/path").starts_with('/')
                        {
                            problems.push(format!("{rel} doc {i}: bad JSON patch op {op}"));
                        }
                    }
                }
                Value::Object(m) if m.contains_key("kind") => {
                    objects += 1;
                    if s(d, "/apiVersion").is_empty() {
                        problems.push(format!("{rel} doc {i}: no apiVersion"));
                    }
                    if kind(d) != "Kustomization" && name(d).is_empty() {
                        problems.push(format!("{rel} doc {i}: {} without metadata.name", kind(d)));
                    }
                }
                // metadata/annotations.yaml of the bundle.
                Value::Object(m) if m.contains_key("annotations") => {}
                other => problems.push(format!("{rel} doc {i}: not an object: {other}")),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        files.len() >= 30 && objects >= 35,
        "{} files, {objects} objects",
        files.len()
    );
}

// ----- kustomize: kubectl's own ------------------------------------------------------------

/// What to install when kubectl is missing or too old (`.ci/run test` checks it first).
const KUBECTL_HINT: &str = "install kubectl >= 1.27 (kustomize v5 built in), e.g. the `kubectl` \
    package of the Kubernetes apt repository (Debian 12's kubernetes-client embeds kustomize v2, \
    which cannot read `patches:`); `.ci/run test` checks for it";

fn is_cluster_scoped(k: &str) -> bool {
    matches!(
        k,
        "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition"
    )
}

/// `kubectl kustomize DIR`: the objects it renders, or its error. A missing kubectl fails the
/// test with [`KUBECTL_HINT`] instead of skipping it.
#[allow(clippy::disallowed_methods)] // runs kubectl, a real tool
fn kustomize(dir: &Path) -> Result<Vec<Value>, String> {
    let out = match std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("kubectl not found: {KUBECTL_HINT}")
        }
        Err(e) => panic!("kubectl kustomize {}: {e}", dir.display()),
    };
    if !out.status.success() {
        return Err(format!(
            "{}\n(kubectl's kustomize: {}; talm's manifests need v5)",
            String::from_utf8_lossy(&out.stderr).trim(),
            kustomize_version()
        ));
    }
    let text = String::from_utf8(out.stdout).map_err(|e| e.to_string())?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| e.to_string())?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The `Kustomize Version:` kubectl reports, for error messages.
#[allow(clippy::disallowed_methods)] // runs kubectl, a real tool
fn kustomize_version() -> String {
    std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("Kustomize Version: ").map(str::to_string))
        })
        .unwrap_or_else(|| format!("unknown ({KUBECTL_HINT})"))
}

/// Checks the objects of one build: no object twice (kustomize rejects most duplicates; this
/// also catches two objects differing only in apiVersion group).
fn unique(what: &str, objs: Vec<Value>) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    for o in &objs {
        let id = (
            group_of(s(o, "/apiVersion")).to_string(),
            kind(o).to_string(),
            s(o, "/metadata/namespace").to_string(),
            name(o).to_string(),
        );
        assert!(seen.insert(id.clone()), "{what}: duplicate {id:?}");
    }
    objs
}

/// `kubectl kustomize deploy/<rel>`.
fn built(rel: &str) -> Vec<Value> {
    let objs = kustomize(&deploy_dir().join(rel))
        .unwrap_or_else(|e| panic!("kubectl kustomize deploy/{rel}:\n{e}"));
    unique(rel, objs)
}

/// An overlay with one of its optional JSON patches (documented in the patch file, not listed
/// in its kustomization.yaml) added on the talm-hub Deployment, as an administrator would.
/// kustomize refuses absolute resource paths: the overlay is named relative to the temp dir.
fn built_with_patch(overlay: &str, patch: &str) -> Vec<Value> {
    let tmp = tempfile::tempdir().unwrap();
    let overlay_dir = deploy_dir().join(overlay).canonicalize().unwrap();
    let up = tmp.path().canonicalize().unwrap().components().count() - 1;
    let rel = PathBuf::from("../".repeat(up)).join(overlay_dir.strip_prefix("/").unwrap());
    std::fs::copy(
        deploy_dir().join(overlay).join(patch),
        tmp.path().join(patch),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n- {}\npatches:\n- path: {patch}\n  target:\n    group: apps\n    \
             version: v1\n    kind: Deployment\n    name: talm-hub\n",
            rel.display()
        ),
    )
    .unwrap();
    let what = format!("deploy/{overlay} + {patch}");
    let objs = kustomize(tmp.path()).unwrap_or_else(|e| panic!("kubectl kustomize {what}:\n{e}"));
    unique(&what, objs)
}

fn deployments(objs: &[Value]) -> Vec<&Value> {
    objs.iter().filter(|o| kind(o) == "Deployment").collect()
}

fn container(d: &Value) -> &Value {
    &d["spec"]["template"]["spec"]["containers"][0]
}

fn env_of(c: &Value) -> BTreeMap<String, String> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                s(e, "/name").to_string(),
                e["value"].as_str().unwrap_or("<from>").to_string(),
            )
        })
        .collect()
}

/// The `env` names of one `talm-hub` subcommand's arguments (and the global ones).
fn clap_env_names(sub: &str) -> BTreeSet<String> {
    let cmd = talm_hub::Args::command();
    let mut names: BTreeSet<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    let sc = cmd
        .find_subcommand(sub)
        .unwrap_or_else(|| panic!("no subcommand {sub}"));
    names.extend(
        sc.get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned())),
    );
    names
}

#[test]
fn kustomize_base_and_overlays_resolve() {
    let env_names = |objs: &[Value]| -> Vec<String> {
        deployments(objs)
            .iter()
            .flat_map(|d| container(d)["env"].as_array().cloned().unwrap_or_default())
            .map(|e| s(&e, "/name").to_string())
            .collect()
    };
    let base_env = env_names(&built("base"));
    assert!(!base_env.is_empty());
    for rel in [
        "base",
        "overlays/default",
        "overlays/disconnected",
        "overlays/loadbalancer",
        "overlays/olm-extras",
    ] {
        let objs = built(rel);
        assert!(!objs.is_empty(), "{rel}");
        for o in &objs {
            if !is_cluster_scoped(kind(o)) {
                assert_eq!(s(o, "/metadata/namespace"), NAMESPACE, "{rel}: {}", name(o));
            }
        }
        // The overlays set TALM_GATEWAY_SERVER_NAMES by its index in the env list: if the
        // base's order changed, the patch would overwrite another variable. Every variable of
        // the base is still there, each once.
        let env = env_names(&objs);
        if !env.is_empty() {
            let mut seen = BTreeSet::new();
            for n in &env {
                assert!(seen.insert(n), "{rel}: env {n} twice: {env:?}");
            }
            for n in &base_env {
                assert!(
                    env.contains(n),
                    "{rel}: a patch dropped the base's env {n}: {env:?}"
                );
            }
        }
    }
    let default = built("overlays/default");
    let host = s(find(&default, "Route", "talm-gateway"), "/spec/host");
    assert!(!host.is_empty());
    let names =
        env_of(container(find(&default, "Deployment", "talm-hub")))["TALM_GATEWAY_SERVER_NAMES"]
            .clone();
    assert!(
        names.split(',').any(|n| n == host),
        "the gateway certificate must name the Route host {host}: {names}"
    );

    let lb = built("overlays/loadbalancer");
    assert!(lb.iter().all(|o| kind(o) != "Route"), "{:?}", ids(&lb));
    assert_eq!(
        s(find(&lb, "Service", "talm-gateway-lb"), "/spec/type"),
        "LoadBalancer"
    );

    let dis = built("overlays/disconnected");
    for d in deployments(&dis) {
        let image = s(container(d), "/image");
        assert!(
            image.starts_with("mirror.registry.example.com:5000/"),
            "{image}"
        );
    }
    let hub = container(find(&dis, "Deployment", "talm-hub"));
    let cert_file = &env_of(hub)["SSL_CERT_FILE"];
    let mount = hub["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "trusted-ca")
        .unwrap();
    assert!(cert_file.starts_with(s(mount, "/mountPath")));
    assert_eq!(
        s(
            find(&dis, "ConfigMap", "talm-trusted-ca"),
            "/metadata/labels/config.openshift.io~1inject-trusted-cabundle"
        ),
        "true"
    );

    let olm = built("overlays/olm-extras");
    assert!(deployments(&olm).is_empty(), "OLM installs the Deployments");
}

/// restricted-v2 (the pod and every container), probes on named ports, mounts with volumes, and
/// args and env names that are real flags of the `talm-hub` subcommand the container runs.
fn restricted_v2_and_real_flags(what: &str, d: &Value) {
    let n = format!("{what}: {}", name(d));
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{n}");
    assert_eq!(
        s(pod, "/securityContext/seccompProfile/type"),
        "RuntimeDefault",
        "{n}"
    );
    assert!(
        pod["securityContext"].get("runAsUser").is_none(),
        "{n}: restricted-v2 assigns the UID"
    );
    assert!(pod["securityContext"].get("fsGroup").is_none(), "{n}");
    // The pod's labels select it, and it carries the Deployment's selector.
    for (k, v) in d["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&d["spec"]["template"]["metadata"]["labels"][k], v, "{n}");
    }
    for c in pod["containers"].as_array().unwrap() {
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{n}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{n}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{n}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{n}");
        assert!(sc["capabilities"].get("add").is_none(), "{n}");
        assert_eq!(s(sc, "/seccompProfile/type"), "RuntimeDefault", "{n}");
        assert!(sc.get("privileged").is_none_or(|p| p == false), "{n}");
        assert!(c["resources"]["requests"]["cpu"].is_string(), "{n}");
        assert!(c["resources"]["requests"]["memory"].is_string(), "{n}");
        assert!(
            c["livenessProbe"].is_object() && c["readinessProbe"].is_object(),
            "{n}"
        );
        // Probe ports are named container ports.
        let ports: BTreeMap<&str, i64> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (s(p, "/name"), p["containerPort"].as_i64().unwrap()))
            .collect();
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            if let Some(p) = c.get(probe) {
                let port = s(p, "/httpGet/port");
                assert!(ports.contains_key(port), "{n} {probe}: port {port}");
            }
        }
        // Every volume mount has a volume.
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            assert!(
                pod["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v["name"] == m["name"]),
                "{n}: mount {m}"
            );
        }
        // The args parse as a talm-hub command line, and the env names are its flags'.
        let args: Vec<String> = std::iter::once("talm-hub".to_string())
            .chain(
                c["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string()),
            )
            .collect();
        let sub = args[1].clone();
        let env = env_of(c);
        let parsed = {
            // Only flags on the command line: parse without the env fallbacks' values.
            use clap::Parser;
            talm_hub::Args::try_parse_from(&args)
        };
        if let Err(e) = &parsed {
            // `gateway` requires --state-dir, which the Deployment gives by env.
            assert!(
                e.kind() == clap::error::ErrorKind::MissingRequiredArgument
                    && env.contains_key("TALM_STATE_DIR"),
                "{n}: {args:?}: {e}"
            );
        }
        let known = clap_env_names(&sub);
        let extra = ["SSL_CERT_FILE"];
        for k in env.keys() {
            assert!(
                known.contains(k) || extra.contains(&k.as_str()),
                "{n}: env {k} is not a flag of `talm-hub {sub}` (known: {known:?})"
            );
        }
    }
}

#[test]
fn deployments_are_restricted_v2_and_use_real_flags() {
    let objs = built("base");
    let deps = deployments(&objs);
    assert_eq!(deps.len(), 1, "talm-hub run serves the gateway too");
    // Every rendering that installs the Deployment: the overlays' patches and the optional
    // ones (their env names must be real flags too).
    let overlays = [
        ("base".to_string(), objs.clone()),
        ("overlays/default".into(), built("overlays/default")),
        (
            "overlays/disconnected".into(),
            built("overlays/disconnected"),
        ),
        (
            "overlays/loadbalancer".into(),
            built("overlays/loadbalancer"),
        ),
        (
            "overlays/default + gateway-tls-secret.yaml".into(),
            built_with_patch("overlays/default", "gateway-tls-secret.yaml"),
        ),
        (
            "overlays/disconnected + update-graph-file.yaml".into(),
            built_with_patch("overlays/disconnected", "update-graph-file.yaml"),
        ),
    ];
    for (what, objs) in &overlays {
        let deps = deployments(objs);
        assert_eq!(deps.len(), 1, "{what}");
        restricted_v2_and_real_flags(what, deps[0]);
    }
    let hub = find(&objs, "Deployment", "talm-hub");
    assert_eq!(hub["spec"]["replicas"], 2);
    let c = container(hub);
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--leader-elect=true"), "{args:?}");
    assert_eq!(s(c, "/livenessProbe/httpGet/path"), "/healthz");
    assert_eq!(s(c, "/readinessProbe/httpGet/path"), "/readyz");
    let health = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "health")
        .unwrap();
    assert!(args.contains(&format!("--health-addr=0.0.0.0:{}", health["containerPort"]).as_str()));
    assert_eq!(s(hub, "/spec/template/spec/serviceAccountName"), "talm-hub");
    // Every replica serves the agents' gateway: the gRPC port, the Secrets' namespace from
    // the downward API, no volume for state.
    let grpc = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc")
        .unwrap();
    assert!(args.contains(&format!("--grpc-addr=0.0.0.0:{}", grpc["containerPort"]).as_str()));
    let ns = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "TALM_NAMESPACE")
        .unwrap();
    assert_eq!(s(ns, "/valueFrom/fieldRef/fieldPath"), "metadata.namespace");
    assert!(
        !env_of(c).contains_key("TALM_STATE_DIR")
            && objs.iter().all(|o| kind(o) != "PersistentVolumeClaim"),
        "gateway state lives in Secrets"
    );
}

#[test]
fn services_route_monitoring_and_network_policies_fit_the_pods() {
    let objs = built("base");
    let pods: Vec<(&Value, &Value)> = deployments(&objs)
        .into_iter()
        .map(|d| (&d["spec"]["template"]["metadata"]["labels"], container(d)))
        .collect();
    let selects = |sel: &Value, labels: &Value| {
        sel.as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &labels[k] == v)
    };
    for svc in objs.iter().filter(|o| kind(o) == "Service") {
        let n = name(svc);
        let matched: Vec<_> = pods
            .iter()
            .filter(|(l, _)| selects(&svc["spec"]["selector"], l))
            .collect();
        assert!(!matched.is_empty(), "Service {n} selects no pod");
        for p in svc["spec"]["ports"].as_array().unwrap() {
            let tp = s(p, "/targetPort");
            for (_, c) in &matched {
                assert!(
                    c["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|cp| cp["name"] == tp),
                    "Service {n}: targetPort {tp}"
                );
            }
        }
    }
    let route = find(&objs, "Route", "talm-gateway");
    assert_eq!(s(route, "/spec/tls/termination"), "passthrough");
    let svc = find(&objs, "Service", s(route, "/spec/to/name"));
    assert!(
        svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == route["spec"]["port"]["targetPort"])
    );
    // The ServiceMonitor scrapes the two metrics Services by their `metrics` port.
    let sm = find(&objs, "ServiceMonitor", "talm");
    let scraped: Vec<&str> = objs
        .iter()
        .filter(|o| {
            kind(o) == "Service"
                && selects(
                    &sm["spec"]["selector"]["matchLabels"],
                    &o["metadata"]["labels"],
                )
        })
        .map(name)
        .collect();
    assert_eq!(
        scraped,
        ["talm-hub-metrics"],
        "talm_gateway_* are on run's port"
    );
    assert_eq!(s(sm, "/spec/endpoints/0/port"), "metrics");
    // Every container port is allowed in by some NetworkPolicy (after the default deny).
    let policies: Vec<&Value> = objs.iter().filter(|o| kind(o) == "NetworkPolicy").collect();
    assert!(
        policies
            .iter()
            .any(|p| p["spec"]["podSelector"] == json!({}) && p["spec"].get("ingress").is_none())
    );
    for (labels, c) in &pods {
        for port in c["ports"].as_array().unwrap() {
            let n = port["containerPort"].clone();
            assert!(
                policies.iter().any(|p| {
                    p["spec"]["podSelector"]["matchLabels"]
                        .as_object()
                        .is_some_and(|_| selects(&p["spec"]["podSelector"]["matchLabels"], labels))
                        && p["spec"]["ingress"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|r| {
                                r["ports"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .any(|pp| pp["port"] == n)
                            })
                }),
                "port {n} of {labels} is not allowed by any NetworkPolicy"
            );
        }
    }
}

// ----- CRDs ----------------------------------------------------------------------------------

#[test]
fn crds_in_the_bundle_equal_deploy_crds_equal_talm_hub_crds() {
    let manifests = talm_hub::crds::manifests().unwrap();
    assert_eq!(manifests.len(), 4);
    for m in &manifests {
        let generated = m.content.as_bytes();
        let committed = std::fs::read(deploy_dir().join("crds").join(&m.file_name)).unwrap();
        assert!(
            committed == generated,
            "deploy/crds/{} differs from `talm-hub crds`; run `cargo run -p talm-hub -- crds`",
            m.file_name
        );
        let bundled =
            std::fs::read(deploy_dir().join("bundle/manifests").join(&m.file_name)).unwrap();
        assert!(
            bundled == committed,
            "deploy/bundle/manifests/{0} differs from deploy/crds/{0}; copy it",
            m.file_name
        );
    }
    let mut bundle_crds: Vec<String> = std::fs::read_dir(deploy_dir().join("bundle/manifests"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| !f.ends_with("clusterserviceversion.yaml") && f != READER_ROLE_FILE)
        .collect();
    bundle_crds.sort();
    let mut want: Vec<String> = manifests.iter().map(|m| m.file_name.clone()).collect();
    want.sort();
    assert_eq!(
        bundle_crds, want,
        "the bundle holds the CSV, the CRDs and the reader ClusterRole ({READER_ROLE_FILE})"
    );
}

/// The bundle's copy of the ClusterRole talm-metrics-reader.
const READER_ROLE_FILE: &str = "talm-metrics-reader_rbac.authorization.k8s.io_v1_clusterrole.yaml";

/// Who may read the admin endpoints that expose fleet data ships with every install path: the
/// bundle's ClusterRole equals deploy/base/core's, it grants `get` on exactly the paths
/// talm-hub guards, and the extras bind it to the ServiceAccount the ServiceMonitor scrapes as.
#[test]
fn metrics_reader_role_ships_in_core_and_bundle_and_is_bound_to_prometheus() {
    let core = docs("base/core/rbac.yaml");
    let role = find(&core, "ClusterRole", "talm-metrics-reader");
    let bundled = &docs(&format!("bundle/manifests/{READER_ROLE_FILE}"))[0];
    assert_eq!(bundled, role, "bundle and deploy/base/core differ");
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    let urls: BTreeSet<&str> = rules[0]["nonResourceURLs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(urls, BTreeSet::from(["/metrics", "/agents", "/agents/*"]));
    assert_eq!(rules[0]["verbs"], json!(["get"]));
    let objs = built("base");
    let sm = find(&objs, "ServiceMonitor", "talm");
    assert_eq!(
        s(sm, "/spec/endpoints/0/bearerTokenFile"),
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "the scrape must send Prometheus's token"
    );
    // The scraper's ServiceAccount: the one allowed to discover the endpoints.
    let discover = find(&objs, "RoleBinding", "talm-prometheus-k8s");
    let binding = objs
        .iter()
        .find(|o| kind(o) == "ClusterRoleBinding" && s(o, "/roleRef/name") == "talm-metrics-reader")
        .expect("a ClusterRoleBinding of talm-metrics-reader in deploy/base/extras");
    assert_eq!(binding["subjects"], discover["subjects"]);
    let olm = built("overlays/olm-extras");
    assert!(
        olm.iter()
            .any(|o| kind(o) == "ClusterRoleBinding"
                && s(o, "/roleRef/name") == "talm-metrics-reader"),
        "OLM installs get the binding with the extras"
    );
}

// ----- RBAC ----------------------------------------------------------------------------------

type Rules = BTreeMap<(String, String), BTreeSet<String>>;

fn rules_of(role: &Value) -> Rules {
    let mut out = Rules::new();
    for r in role["rules"].as_array().into_iter().flatten() {
        for g in r["apiGroups"].as_array().unwrap() {
            for res in r["resources"].as_array().unwrap() {
                let e = out
                    .entry((g.as_str().unwrap().into(), res.as_str().unwrap().into()))
                    .or_default();
                for v in r["verbs"].as_array().unwrap() {
                    e.insert(v.as_str().unwrap().into());
                }
            }
        }
    }
    out
}

fn rbac() -> (Value, Value, Vec<Value>) {
    let objs = docs("base/core/rbac.yaml");
    let cr = find(&objs, "ClusterRole", "talm-hub").clone();
    let role = find(&objs, "Role", "talm-hub").clone();
    (cr, role, objs)
}

/// Rules as RBAC YAML, one rule per (group, resource).
fn rules_yaml(rules: &Rules) -> String {
    rules
        .iter()
        .map(|((g, r), verbs)| {
            format!(
                "- apiGroups: [{}]\n  resources: [{r}]\n  verbs: [{}]\n",
                if g.is_empty() {
                    "\"\"".to_string()
                } else {
                    g.clone()
                },
                verbs.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect()
}

fn minus(a: &Rules, b: &Rules) -> Rules {
    let mut out = Rules::new();
    for (k, verbs) in a {
        let have = b.get(k).cloned().unwrap_or_default();
        let d: BTreeSet<String> = verbs.difference(&have).cloned().collect();
        if !d.is_empty() {
            out.insert(k.clone(), d);
        }
    }
    out
}

/// Calls the operator makes that the rollout below cannot provoke against the double, with
/// the reason. They stay in the manifests without being seen in the log. Empty today: every
/// granted verb is exercised.
const NOT_EXERCISED: &[(&str, &str, &str, &str)] = &[];

const WAIT: Duration = Duration::from_secs(60);

/// (group, resource) the operator uses only in its own namespace: granted by the Role.
const HUB_NAMESPACE_ONLY: &[(&str, &str)] = &[("coordination.k8s.io", "leases"), ("", "secrets")];

/// The status code of `GET path` on `addr`, with a bearer token if given.
async fn http_get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Waits until `f` holds, playing the agents ([`answer_agent_tasks`]) and OCM's work agent
/// ([`operator_support::complete_manifest_works`]) before every poll.
async fn wait_for<T>(what: &str, double: &KubeDouble, mut f: impl FnMut() -> Option<T>) -> T {
    operator_support::wait_for_within(WAIT, Duration::from_millis(20), what, || {
        answer_agent_tasks(double);
        operator_support::complete_manifest_works(double);
        f()
    })
    .await
}

/// Plays the agents: every assigned pre-cache or backup task is reported `Succeeded` in the
/// SpokeAgent status, written directly (no HTTP, so the request log holds the operator's
/// calls only), as the gateway does. The agents predate InstallPlan approval: they reject
/// that task, as an older agent does, so the operator falls back to views and actions (whose
/// calls the RBAC check must see).
fn answer_agent_tasks(double: &KubeDouble) {
    for mut a in double.list_values("talm.dev/v1alpha1", "SpokeAgent", None) {
        let mut changed = false;
        for (task, state) in [
            ("precache", "Succeeded"),
            ("backup", "Succeeded"),
            ("installPlans", "UnrecoverableError"),
        ] {
            let id = a["spec"][task]["id"].clone();
            if id.is_string() && a["status"][task]["id"] != id {
                a["status"][task] = json!({"id": id, "state": state});
                a["status"]["connected"] = json!(true);
                changed = true;
            }
        }
        if changed {
            double.put_value(a).unwrap();
        }
    }
}

fn set_compliant(double: &KubeDouble, policy: &str, cluster: &str) {
    let mut p = double
        .get_value(
            "policy.open-cluster-management.io/v1",
            "Policy",
            Some("default"),
            policy,
        )
        .unwrap();
    let entries = p["status"]["status"].as_array_mut().unwrap();
    entries.retain(|e| e["clustername"] != cluster);
    entries.push(
        json!({"clustername": cluster, "clusternamespace": cluster, "compliant": "Compliant"}),
    );
    double.put_value(p).unwrap();
}

const MCV: &str = "view.open-cluster-management.io/v1beta1";

/// Plays RHACM's view addon: the spoke object's content in the view's status (written
/// directly, so the request log holds the operator's calls only).
fn fill_view(double: &KubeDouble, mut view: Value, result: Value) {
    view["status"] = json!({
        "conditions": [{"type": "Processing", "status": "True",
                        "reason": "GetResourceProcessing", "message": "Watching resources successfully",
                        "lastTransitionTime": "2026-03-02T10:00:00Z"}],
        "result": result});
    double.put_value(view).unwrap();
}

fn cgu(double: &KubeDouble) -> Option<Value> {
    operator_support::cgu(double, "default", "cgu-rbac")
}

fn condition_reason(c: &Value, t: &str) -> Option<String> {
    find_condition(c, t).map(|x| format!("{}/{}", s(x, "/status"), s(x, "/reason")))
}

/// Runs the operator through a rollout that makes every kind of call it can make, and
/// returns the request log's RBAC summary.
async fn observed_calls() -> (Rules, Vec<String>) {
    const P0: &str = "policy0-common-config-policy";
    const P1: &str = "policy1-common-cluster-version-policy";
    const P2: &str = "policy2-common-pao-sub-policy";
    let double = KubeDouble::start().await.unwrap();
    for f in [
        "managed-clusters.yaml",
        "policies.yaml",
        "child-policies.yaml",
    ] {
        for mut o in yaml_docs(&Path::new(FIXTURES).join("objects").join(f)).unwrap() {
            if kind(&o) == "ManagedCluster" {
                // Only sno-ztp (below) gets a ZTP CGU; the rollout's clusters are done.
                o["metadata"]["labels"]["ztp-done"] = json!("");
            }
            double.put_value(o).unwrap();
        }
    }
    // A freshly installed, Available cluster: the ZTP controller creates ztp-install (the
    // Namespace) and the CGU ztp-install/sno-ztp.
    double
        .put_value(json!({
            "apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
            "metadata": {"name": "sno-ztp", "labels": {"name": "sno-ztp"}},
            "spec": {"hubAcceptsClient": true},
            "status": {"conditions": [{"type": "ManagedClusterConditionAvailable",
                "status": "True", "reason": "r", "message": "m",
                "lastTransitionTime": "2026-03-02T10:00:00Z"}]}
        }))
        .unwrap();
    // A bootstrap token for spoke1, as `talm-hub agents token spoke1` (an administrator's
    // call, not the operator's: written directly, so it stays out of the request log).
    let token_secret = "s3cr3t-rbac-token";
    let record = TokenRecord {
        id: "rbac01".into(),
        cluster: "spoke1".into(),
        secret_sha256: secret_hash(token_secret),
        expires_at: SystemClock.unix() + 3600,
        used_at: None,
        used_by: None,
    };
    double
        .put_value(serde_json::to_value(secrets::token_to_secret(NAMESPACE, &record)).unwrap())
        .unwrap();
    double
        .put_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cluster-group-upgrade-overrides", "namespace": "default"},
            "data": {"excludePrecachePatterns": "aws\nazure\n"}}))
        .unwrap();
    // A PrecacheBudget selecting no cluster: watched, and its status written by the pre-cache
    // scheduler (ClustersSelected False); the rollout is not held by it.
    double
        .put_value(
            json!({"apiVersion": "talm.dev/v1alpha1", "kind": "PrecacheBudget",
            "metadata": {"name": "rbac-nowhere"},
            "spec": {"clusterSelector": {"matchLabels": {"rbac-site": "none"}},
                     "bandwidth": "10Mi"}}),
        )
        .unwrap();
    double
        .put_value(json!({
            "apiVersion": "ran.openshift.io/v1alpha1",
            "kind": "ClusterGroupUpgrade",
            "metadata": {"name": "cgu-rbac", "namespace": "default",
                         "annotations": {"cluster-group-upgrades-operator/name-suffix": "rbac"}},
            "spec": {
                "clusters": ["spoke1", "spoke4", "spoke6"],
                "managedPolicies": [P0, P1, P2],
                "remediationStrategy": {"maxConcurrency": 1, "timeout": 240},
                "preCaching": true,
                "backup": true,
                "enable": false,
                "actions": {
                    "beforeEnable": {"addClusterLabels": {"rbac-running": ""}},
                    "afterCompletion": {
                        "addClusterLabels": {"rbac-done": ""},
                        "deleteClusterLabels": {"rbac-running": ""},
                        "deleteObjects": true
                    }
                }
            }
        }))
        .unwrap();
    // A ManifestWork rollout beside it: two templates (the first work is deleted before the
    // second is created), the works deleted at the end (deleteObjects).
    for t in ["rbac-t1", "rbac-t2"] {
        double
            .put_value(operator_support::mw_template("default", t, 1, Value::Null))
            .unwrap();
    }
    double
        .put_value(json!({
            "apiVersion": "ran.openshift.io/v1alpha1",
            "kind": "ClusterGroupUpgrade",
            "metadata": {"name": "cgu-rbac-mw", "namespace": "default"},
            "spec": {
                "clusters": ["spoke2", "spoke3"],
                "manifestWorkTemplates": ["rbac-t1", "rbac-t2"],
                "remediationStrategy": {"maxConcurrency": 1, "timeout": 240},
                "enable": true,
                "actions": {"afterCompletion": {"deleteObjects": true}}
            }
        }))
        .unwrap();
    // The first status write conflicts: the operator re-reads the CGU (get).
    double.inject(
        Fault::error(409)
            .verb(Verb::Patch)
            .resource("clustergroupupgrades")
            .subresource("status")
            .times(1),
    );
    let graph = FileUpdateGraph::load(&Path::new(FIXTURES).join("update-graph.yaml")).unwrap();
    let config = Config {
        workers: 5,
        leader_election: Some(LeaderElection {
            namespace: NAMESPACE.into(),
            name: "talm-hub-leader".into(),
            timing: LeaseTiming {
                lease_duration: Duration::from_secs(15),
                renew_deadline: Duration::from_secs(10),
                retry_period: Duration::from_millis(200),
            },
        }),
        identity: "talm-hub-0".into(),
        graph: Arc::new(graph),
        graph_fetcher: None,
        ztp: true,
    };
    let op = Operator::new(double.client(), operator_support::manual_clock(), config);
    // The gateway, as `talm-hub run` starts it in every replica: the agents' CA and the
    // serving certificate (Secrets, created on first start), the enrollment watch.
    let hub = GatewayHub::start(
        op,
        GatewaySettings {
            namespace: NAMESPACE.into(),
            serving: ServingTls::Generated {
                names: vec!["talm-gateway.talm-system.svc".into()],
            },
            gateway: GatewayConfig::default(),
            cert_lifetime: Duration::from_secs(3600),
        },
    )
    .await;
    let gateway = hub.gateway.clone();

    let d = &double;
    wait_for("pre-caching done", d, || {
        cgu(d).filter(|c| {
            condition_reason(c, "PrecachingSuceeded").is_some_and(|r| r.starts_with("True"))
        })
    })
    .await;
    let mut c = cgu(d).unwrap();
    c["spec"]["enable"] = json!(true);
    d.put_value(c).unwrap();
    wait_for("batch 1 enforced", d, || {
        d.list_values(
            "cluster.open-cluster-management.io/v1beta1",
            "Placement",
            Some("default"),
        )
        .iter()
        .any(|p| p.to_string().contains("\"spoke1\""))
        .then_some(())
    })
    .await;
    // InstallPlan approval (P2 holds a Subscription): once spoke1 reaches P2 the operator
    // views the Subscription; RHACM fills the view from the spoke; the operator views the
    // InstallPlan, then approves it with an action.
    set_compliant(d, P0, "spoke1");
    set_compliant(d, P1, "spoke1");
    let sub_view = "cgu-rbac-default-subscription-performance-addon-operator-rbac";
    let view = wait_for("Subscription view", d, || {
        d.get_value(MCV, "ManagedClusterView", Some("spoke1"), sub_view)
    })
    .await;
    fill_view(
        d,
        view,
        json!({"apiVersion": "operators.coreos.com/v1alpha1", "kind": "Subscription",
               "metadata": {"name": "performance-addon-operator",
                            "namespace": "openshift-performance-addon-operator"},
               "status": {"state": "UpgradePending",
                          "install": {"name": "install-rbac", "kind": "InstallPlan"}}}),
    );
    let view = wait_for("InstallPlan view", d, || {
        d.get_value(MCV, "ManagedClusterView", Some("spoke1"), "install-rbac")
    })
    .await;
    fill_view(
        d,
        view,
        json!({"apiVersion": "operators.coreos.com/v1alpha1", "kind": "InstallPlan",
               "metadata": {"name": "install-rbac",
                            "namespace": "openshift-performance-addon-operator",
                            "resourceVersion": "7"},
               "spec": {"approval": "Manual", "approved": false,
                        "clusterServiceVersionNames": ["performance-addon-operator.v4.9.0"]}}),
    );
    wait_for("InstallPlan approval action", d, || {
        d.get_value(
            "action.open-cluster-management.io/v1beta1",
            "ManagedClusterAction",
            Some("spoke1"),
            "install-rbac",
        )
    })
    .await;
    for cluster in ["spoke1", "spoke4"] {
        for p in [P0, P1, P2] {
            set_compliant(d, p, cluster);
        }
    }
    let done = wait_for("rollout succeeded", d, || {
        cgu(d).filter(|c| condition_reason(c, "Succeeded").is_some_and(|r| r.starts_with("True")))
    })
    .await;
    let labels = d
        .get_value(
            "cluster.open-cluster-management.io/v1",
            "ManagedCluster",
            None,
            "spoke1",
        )
        .unwrap()["metadata"]["labels"]
        .clone();
    assert!(
        labels.get("rbac-done").is_some(),
        "afterCompletion ran: {labels}"
    );
    assert!(
        done["status"]["backup"]["status"].is_object(),
        "{:#}",
        done["status"]
    );
    // ZTP: sno-ztp got its CGU in ztp-install.
    wait_for("ZTP CGU", d, || {
        d.get_value(
            "ran.openshift.io/v1alpha1",
            "ClusterGroupUpgrade",
            Some("ztp-install"),
            "sno-ztp",
        )
    })
    .await;
    // The gateway: spoke1's agent enrolls with the token (consumed in its Secret, the
    // enrollment Secret created), renews its certificate, and reports status (the first
    // write conflicts: the gateway re-reads the SpokeAgent).
    double.inject(
        Fault::error(409)
            .verb(Verb::Update)
            .resource("spokeagents")
            .subresource("status")
            .times(1),
    );
    let gw = gateway.clone();
    let token = format!("{}.{token_secret}", record.id);
    let (_, csr) = talm_shared::pki::agent_key_and_csr().unwrap();
    gw.enroller.enroll(&token, &csr).await.unwrap();
    let (_, csr) = talm_shared::pki::agent_key_and_csr().unwrap();
    gw.enroller.renew("spoke1", &csr).await.unwrap();
    let mut status = gw
        .agents
        .status("spoke1")
        .await
        .unwrap()
        .unwrap_or_default();
    // A heartbeat of the session this replica holds.
    status.connected = true;
    status.last_seen = serde_json::from_value(json!("2026-03-02T10:05:00Z")).unwrap();
    gw.agents.write_status("spoke1", &status).await.unwrap();
    assert!(
        d.get_value("v1", "Secret", Some(NAMESPACE), "talm-enrollment-spoke1")
            .is_some()
    );
    wait_for("ManifestWork rollout succeeded", d, || {
        operator_support::cgu(d, "default", "cgu-rbac-mw")
            .filter(|c| condition_reason(c, "Succeeded").is_some_and(|r| r.starts_with("True")))
    })
    .await;
    // The admin endpoints, guarded as `talm-hub run --admin-auth kube` guards them: a scrape
    // with Prometheus's token costs a TokenReview and a SubjectAccessReview per path.
    let scraper = "system:serviceaccount:openshift-monitoring:prometheus-k8s";
    d.accept_token("prometheus-token", scraper, &["system:serviceaccounts"]);
    d.grant_non_resource(scraper, "get", "/metrics");
    d.grant_non_resource(scraper, "get", "/agents");
    let auth = Arc::new(AdminAuth::new(
        Arc::new(KubeAuthorizer::new(d.client())),
        Arc::new(SystemClock),
    ));
    let router = admin_router(hub.shared.clone(), Some(gateway.clone()), Some(auth));
    let listener = talm_hub::admin::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let admin = listener.local_addr().unwrap();
    let (stop_admin, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(talm_hub::admin::serve_router(
        listener,
        router,
        async move {
            let _ = stopped.await;
        },
    ));
    for path in ["/metrics", "/agents"] {
        assert_eq!(
            http_get(admin, path, Some("prometheus-token")).await,
            200,
            "{path}"
        );
        assert_eq!(http_get(admin, path, None).await, 401, "{path}");
    }
    let _ = stop_admin.send(());
    served.await.unwrap().unwrap();
    // Deletion: the operator cleans up and removes its finalizer.
    d.delete::<ClusterGroupUpgrade>(Some("default"), "cgu-rbac")
        .unwrap();
    wait_for("CGU gone", d, || cgu(d).is_none().then_some(())).await;
    hub.stop().await;

    let requests = double.requests();
    let lease_namespaces: Vec<String> = requests
        .iter()
        .filter(|r| HUB_NAMESPACE_ONLY.iter().any(|(_, res)| r.resource == *res))
        .map(|r| r.namespace.clone().unwrap_or_default())
        .filter(|ns| ns != NAMESPACE)
        .collect();
    let mut observed = Rules::new();
    for ((g, r), verbs) in double.rbac_rules() {
        observed
            .entry((g, r))
            .or_default()
            .extend(verbs.iter().map(|v| v.to_string()));
    }
    double.shutdown().await;
    (observed, lease_namespaces)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_covers_exactly_the_calls_the_operator_makes() {
    let (cr, role, objs) = rbac();
    let (observed, foreign_leases) = observed_calls().await;
    assert!(
        foreign_leases.is_empty(),
        "the Role grants {HUB_NAMESPACE_ONLY:?} in {NAMESPACE} only, but the operator used \
         them in {foreign_leases:?}"
    );
    let mut granted = rules_of(&cr);
    for (k, v) in rules_of(&role) {
        assert!(
            !granted.contains_key(&k),
            "{k:?} in both the ClusterRole and the Role"
        );
        granted.insert(k, v);
    }
    // The Role is namespaced: only the hub namespace's own objects belong there (the leader
    // Lease, the gateway's Secrets).
    assert!(
        rules_of(&role)
            .keys()
            .all(|k| HUB_NAMESPACE_ONLY.contains(&(k.0.as_str(), k.1.as_str())))
    );
    let mut allowed_unused = Rules::new();
    for (g, r, v, why) in NOT_EXERCISED {
        assert!(!why.is_empty());
        allowed_unused
            .entry((g.to_string(), r.to_string()))
            .or_default()
            .insert(v.to_string());
    }
    let missing = minus(&observed, &granted);
    let unused = minus(&minus(&granted, &observed), &allowed_unused);
    assert!(
        missing.is_empty() && unused.is_empty(),
        "deploy/base/core/rbac.yaml (and the CSV's permissions) do not match the operator's \
         API calls.\n\nMissing (add to the ClusterRole; leases go to the Role):\n{}\nUnused \
         (remove, or list in NOT_EXERCISED with the reason):\n{}\nObserved:\n{}",
        rules_yaml(&missing),
        rules_yaml(&unused),
        rules_yaml(&observed)
    );
    // Both are bound to the ServiceAccount the operator's Deployment runs as.
    let hub = docs("base/core/hub-deployment.yaml");
    let sa = s(&hub[0], "/spec/template/spec/serviceAccountName");
    for (bk, rk, rn) in [
        ("ClusterRoleBinding", "ClusterRole", "talm-hub"),
        ("RoleBinding", "Role", "talm-hub"),
    ] {
        let b = objs
            .iter()
            .find(|o| kind(o) == bk && s(o, "/roleRef/name") == rn)
            .unwrap_or_else(|| panic!("no {bk} for {rn}"));
        assert_eq!(s(b, "/roleRef/kind"), rk);
        assert_eq!(s(b, "/subjects/0/kind"), "ServiceAccount");
        assert_eq!(s(b, "/subjects/0/name"), sa);
        assert_eq!(s(b, "/subjects/0/namespace"), NAMESPACE);
    }
}

// ----- OLM bundle ----------------------------------------------------------------------------

fn csv() -> Value {
    let mut d = docs("bundle/manifests/talm.clusterserviceversion.yaml");
    assert_eq!(d.len(), 1);
    d.remove(0)
}

/// Whether `path` (dot-separated, relative to `root`) names a field of the schema.
fn schema_has(root: &Value, path: &str) -> bool {
    let mut node = root;
    for part in path.split('.') {
        while node["type"] == "array" {
            node = &node["items"];
        }
        match node["properties"].get(part) {
            Some(n) => node = n,
            None => return false,
        }
    }
    true
}

#[test]
fn csv_matches_rbac_deployments_images_and_crds() {
    let csv = csv();
    assert_eq!(kind(&csv), "ClusterServiceVersion");
    assert_eq!(s(&csv, "/spec/install/strategy"), "deployment");
    let install = &csv["spec"]["install"]["spec"];
    let (cr, role, _) = rbac();
    let perms = |key: &str, sa: &str| -> Rules {
        let p = install[key]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["serviceAccountName"] == sa)
            .unwrap_or_else(|| panic!("no {key} for {sa}"));
        rules_of(p)
    };
    for (key, role, what) in [
        ("clusterPermissions", &cr, "ClusterRole talm-hub"),
        ("permissions", &role, "Role talm-hub"),
    ] {
        let (csv_rules, want) = (perms(key, "talm-hub"), rules_of(role));
        assert!(
            csv_rules == want,
            "the CSV's {key} differ from the {what} (deploy/base/core/rbac.yaml).\nMissing \
             in the CSV:\n{}\nExtra in the CSV:\n{}",
            rules_yaml(&minus(&want, &csv_rules)),
            rules_yaml(&minus(&csv_rules, &want))
        );
    }
    assert!(
        install["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["serviceAccountName"] == "talm-hub"),
        "no talm-gateway ServiceAccount: the gateway runs in talm-hub"
    );
    // The deployments are deploy/base/core's, image included.
    let mut images = BTreeSet::new();
    assert_eq!(install["deployments"].as_array().unwrap().len(), 1);
    {
        let file = "base/core/hub-deployment.yaml";
        let d = &docs(file)[0];
        let c = install["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == d["metadata"]["name"])
            .unwrap_or_else(|| panic!("CSV has no deployment {}", name(d)));
        assert_eq!(
            c["spec"],
            d["spec"],
            "CSV deployment {} differs from {file}",
            name(d)
        );
        images.insert(s(container(d), "/image").to_string());
    }
    assert_eq!(images.len(), 1, "one image: {images:?}");
    let hub_image = images.into_iter().next().unwrap();
    assert_eq!(s(&csv, "/metadata/annotations/containerImage"), hub_image);
    let related: BTreeMap<&str, &str> = csv["spec"]["relatedImages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (s(r, "/name"), s(r, "/image")))
        .collect();
    assert_eq!(related.get("talm-hub"), Some(&hub_image.as_str()));
    assert_eq!(related.get("talm-agent"), Some(&AGENT_IMAGE));
    assert_eq!(
        talm_gateway::machineconfig::DEFAULT_AGENT_IMAGE,
        AGENT_IMAGE
    );
    // Owned CRDs: exactly the bundle's, with descriptions and real descriptor paths.
    let mut crds = BTreeMap::new();
    for m in talm_hub::crds::manifests().unwrap() {
        let crd = &docs(&format!("bundle/manifests/{}", m.file_name))[0];
        for v in crd["spec"]["versions"].as_array().unwrap() {
            crds.insert(
                (name(crd).to_string(), s(v, "/name").to_string()),
                (
                    s(crd, "/spec/names/kind").to_string(),
                    v["schema"]["openAPIV3Schema"].clone(),
                ),
            );
        }
    }
    let owned = csv["spec"]["customresourcedefinitions"]["owned"]
        .as_array()
        .unwrap();
    assert_eq!(owned.len(), crds.len());
    for o in owned {
        let key = (s(o, "/name").to_string(), s(o, "/version").to_string());
        let (k, schema) = crds
            .get(&key)
            .unwrap_or_else(|| panic!("CSV owns unknown CRD {key:?}"));
        assert_eq!(s(o, "/kind"), k);
        assert!(
            s(o, "/description").len() > 20,
            "{key:?} needs a description"
        );
        assert!(!s(o, "/displayName").is_empty());
        for (list, root) in [("specDescriptors", "spec"), ("statusDescriptors", "status")] {
            for d in o[list].as_array().into_iter().flatten() {
                let p = s(d, "/path");
                assert!(
                    schema_has(&schema["properties"][root], p),
                    "{key:?} {list}: {root}.{p} is not in the CRD schema"
                );
                assert!(!s(d, "/description").is_empty());
            }
        }
        assert!(
            o["specDescriptors"]
                .as_array()
                .is_some_and(|v| !v.is_empty()),
            "{key:?}"
        );
    }
    // The alm-examples parse and use owned kinds.
    let examples: Value =
        serde_json::from_str(s(&csv, "/metadata/annotations/alm-examples")).unwrap();
    for e in examples.as_array().unwrap() {
        assert!(crds.values().any(|(k, _)| k == kind(e)));
    }
    let ann = &docs("bundle/metadata/annotations.yaml")[0]["annotations"];
    assert_eq!(
        s(ann, "/operators.operatorframework.io.bundle.manifests.v1"),
        "manifests/"
    );
    assert_eq!(
        s(
            ann,
            "/operators.operatorframework.io.bundle.channel.default.v1"
        ),
        s(ann, "/operators.operatorframework.io.bundle.channels.v1")
    );
}

// ----- PrometheusRule ------------------------------------------------------------------------

/// Every sample name the hub and the gateway can export, from their registries' exposition.
fn exported_metric_names() -> BTreeSet<String> {
    // A family without series is not in the exposition: give every labelled family one.
    let hub = talm_hub::metrics::Metrics::new();
    hub.failed("conflict");
    hub.watch_events
        .get_or_create(&talm_hub::metrics::KindLabels {
            kind: "policy".into(),
        })
        .inc();
    let cgu: ClusterGroupUpgrade = serde_json::from_value(json!({
        "metadata": {"name": "c", "namespace": "n"},
        "spec": {"remediationStrategy": {"maxConcurrency": 1}},
        "status": {
            "remediationPlan": [["a"], ["b"]],
            "clusters": [{"name": "a", "state": "complete"}],
            "status": {"currentBatch": 2, "currentBatchStartedAt": "2026-01-01T00:00:00Z",
                       "currentBatchRemediationProgress": {"b": {"state": "InProgress"}}}
        }
    }))
    .unwrap();
    hub.observe_cgu("n/c", &cgu, "2026-01-01T00:01:00Z".parse().unwrap());
    let mut text = hub.encode();
    let gw = talm_gateway::metrics::Metrics::default();
    let reason = talm_gateway::metrics::Reason { reason: "x".into() };
    gw.reject("x");
    gw.reports.get_or_create(&reason).inc();
    gw.certificates.get_or_create(&reason).inc();
    gw.tasks
        .get_or_create(&talm_gateway::metrics::StateLabel {
            state: "Active".into(),
        })
        .set(1);
    gw.progress
        .get_or_create(&talm_gateway::metrics::TaskLabel {
            cluster: "a".into(),
            task: "t".into(),
        })
        .set(0.5);
    prometheus_client::encoding::text::encode(&mut text, &gw.registry).unwrap();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (n, t) = rest.split_once(' ').unwrap();
        match t {
            "counter" => {
                names.insert(format!("{n}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{n}{suffix}"));
                }
            }
            _ => {
                names.insert(n.to_string());
            }
        }
    }
    names
}

#[test]
fn prometheus_rules_name_real_metrics() {
    let known = exported_metric_names();
    assert!(
        known.contains("talm_leader") && known.contains("talm_gateway_agents_connected"),
        "{known:?}"
    );
    let rule = &docs("base/extras/prometheusrule.yaml")[0];
    let mut used = BTreeSet::new();
    let mut alerts = 0;
    for g in rule["spec"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            alerts += 1;
            let alert = s(r, "/alert");
            let expr = s(r, "/expr");
            assert!(!alert.is_empty() && !expr.is_empty(), "{r}");
            assert!(!s(r, "/labels/severity").is_empty(), "{alert}: severity");
            assert!(!s(r, "/annotations/summary").is_empty(), "{alert}: summary");
            // Identifiers in the expression that look like talm metrics.
            let mut ident = String::new();
            for ch in expr.chars().chain(std::iter::once(' ')) {
                if ch.is_ascii_alphanumeric() || ch == '_' || ch == ':' {
                    ident.push(ch);
                } else {
                    if ident.starts_with("talm_") {
                        assert!(
                            known.contains(&ident),
                            "{alert}: {ident} is not exported (known: {known:?})"
                        );
                        used.insert(ident.clone());
                    }
                    ident.clear();
                }
            }
        }
    }
    assert!(alerts >= 8, "{alerts}");
    assert!(used.len() >= 8, "{used:?}");
}

// ----- the recovery partition example --------------------------------------------------------

#[test]
fn recovery_partition_example_mounts_its_partition_at_var_recovery() {
    let mc = &docs("examples/recovery-partition-machineconfig.yaml")[0];
    assert_eq!(kind(mc), "MachineConfig");
    assert_eq!(
        s(
            mc,
            "/metadata/labels/machineconfiguration.openshift.io~1role"
        ),
        "master"
    );
    let config = &mc["spec"]["config"];
    assert!(s(config, "/ignition/version").starts_with("3."));
    let part = &config["storage"]["disks"][0]["partitions"][0];
    let label = s(part, "/label");
    assert!(
        part["sizeMiB"].as_u64().unwrap() >= 10 * 1024,
        "room for a backup"
    );
    let fs = &config["storage"]["filesystems"][0];
    let device = format!("/dev/disk/by-partlabel/{label}");
    assert_eq!(s(fs, "/device"), device);
    assert_eq!(s(fs, "/path"), "/var/recovery");
    // The mount unit is named after its path (systemd requires it) and mounts that device.
    let unit = &config["systemd"]["units"][0];
    assert_eq!(s(unit, "/name"), "var-recovery.mount");
    let contents = s(unit, "/contents");
    assert!(contents.contains(&format!("What={device}\n")), "{contents}");
    assert!(contents.contains("Where=/var/recovery\n"));
    assert!(contents.contains(&format!("Type={}\n", s(fs, "/format"))));
}

// ----- enrollment against the Secrets store ----------------------------------------------------

/// `talm-hub agents machineconfig` without --state-dir, as docs/operations.md runs it: the
/// token goes into a Secret, the CA is the `ca.crt` of `talm-gateway-serving`; without that
/// Secret it fails, naming it, and issues no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machineconfig_uses_the_secrets_store_and_the_serving_ca() {
    let double = KubeDouble::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = operator_support::kubeconfig(&double, dir.path());
    let run = |kc: std::path::PathBuf| {
        #[allow(clippy::disallowed_methods)] // the test drives the real binary
        std::process::Command::new(env!("CARGO_BIN_EXE_talm-hub"))
            .args(["agents", "machineconfig", "sno1", "--namespace", NAMESPACE])
            .args([
                "--hub-endpoint",
                "https://talm-gateway.apps.hub.example.com:443",
            ])
            .env("KUBECONFIG", kc)
            .env_remove("TALM_STATE_DIR")
            .env_remove("TALM_HUB_CA_BUNDLE")
            .output()
            .unwrap()
    };
    let tokens = || double.list_values("v1", "Secret", Some(NAMESPACE)).len();
    let out = tokio::task::spawn_blocking({
        let kc = kc.clone();
        move || run(kc)
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("talm-gateway-serving"), "{err}");
    assert_eq!(tokens(), 0, "no token for a failed render");

    talm_hub::operator::agents::pki::ensure_serving(
        double.client(),
        NAMESPACE,
        &["talm-gateway.apps.hub.example.com".to_string()],
        std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_772_445_600),
    )
    .await
    .unwrap();
    let out = tokio::task::spawn_blocking(move || run(kc)).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mc = String::from_utf8(out.stdout).unwrap();
    assert!(mc.contains("50-talm-agent-sno1"), "{mc}");
    let token_secrets: Vec<Value> = double
        .list_values("v1", "Secret", Some(NAMESPACE))
        .into_iter()
        .filter(|s| name(s).starts_with("talm-token-"))
        .collect();
    assert_eq!(token_secrets.len(), 1);
    double.shutdown().await;
}
