//! `talm-hub plan` and `talm-hub crds` as a user runs them: the real binary, real files, stdin,
//! exit codes and the exact one-line error messages for bad input.
// Helpers here are test code too: a panic is a test failure with a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

const NOW: &str = "2026-01-01T10:00:00Z";

const CLUSTERS: &str = "\
apiVersion: cluster.open-cluster-management.io/v1
kind: ManagedCluster
metadata:
  name: spoke1
  labels: {name: spoke1}
---
apiVersion: cluster.open-cluster-management.io/v1
kind: ManagedCluster
metadata:
  name: spoke2
  labels: {name: spoke2}
";

const CGU: &str = "\
apiVersion: ran.openshift.io/v1alpha1
kind: ClusterGroupUpgrade
metadata:
  name: cgu-1
  namespace: default
spec:
  clusters: [spoke1, spoke2]
  managedPolicies: [policy1]
  remediationStrategy:
    maxConcurrency: 1
";

/// A scratch directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        // Tests run in parallel and several use the same file name: make each directory unique.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "talm-hub-plan-cli-{name}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary with `args` (and `stdin`), with a clean environment so no `TALM_*` variable
/// of the caller (such as `TALM_LOG_LEVEL`) leaks in.
#[allow(clippy::disallowed_methods)] // tests run the binary under test
fn talm_hub(args: &[&str], stdin: Option<&str>, cwd: Option<&Path>) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_talm-hub"));
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `plan` on `input` given as a file named `name`; expects exit 2 and returns the single
/// stderr line.
fn bad_input(name: &str, input: &str) -> String {
    let dir = Scratch::new(&format!("bad-{}", name.replace('.', "-")));
    dir.file(name, input);
    let out = talm_hub(&["plan", "-f", name, "--now", NOW], None, Some(dir.path()));
    one_line_error(&out)
}

fn one_line_error(out: &Output) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout: {}",
        text(&out.stdout)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr: {stderr}");
    lines[0]
        .strip_prefix("error: ")
        .unwrap_or_else(|| panic!("{stderr}"))
        .to_string()
}

#[test]
fn wrong_type_names_file_document_and_field() {
    let cgu = CGU.replace("maxConcurrency: 1", "maxConcurrency: \"x\"");
    assert_eq!(
        bad_input("cgu.yaml", &format!("{CLUSTERS}---\n{cgu}")),
        "cgu.yaml doc 3: spec.remediationStrategy.maxConcurrency: invalid type: string \"x\", expected i32"
    );
}

#[test]
fn truncated_yaml_gives_line_and_column() {
    let truncated =
        &CGU[..CGU.find("managedPolicies").unwrap()].replace("[spoke1, spoke2]", "[spoke1, spoke2");
    let e = bad_input("cgu.yaml", truncated);
    assert!(e.starts_with("cgu.yaml: invalid YAML: "), "{e}");
    assert!(e.contains("line 7"), "{e}");
}

#[test]
fn unknown_field_in_a_cgu_spec_is_rejected() {
    let cgu = CGU.replace(
        "  managedPolicies:",
        "  managedPolicy: [x]\n  managedPolicies:",
    );
    let e = bad_input("cgu.yaml", &cgu);
    assert!(
        e.starts_with(
            "cgu.yaml doc 1: spec.managedPolicy: unknown field `managedPolicy`, expected one of"
        ),
        "{e}"
    );
}

#[test]
fn huge_numbers_are_out_of_range() {
    let cgu = CGU.replace("maxConcurrency: 1", "maxConcurrency: 99999999999999999999");
    assert_eq!(
        bad_input("cgu.yaml", &cgu),
        "cgu.yaml doc 1: spec.remediationStrategy.maxConcurrency: number 100000000000000000000 is out of range, expected i32"
    );
}

#[test]
fn empty_files_are_rejected() {
    assert_eq!(
        bad_input("empty.yaml", ""),
        "empty.yaml: no objects in file (it is empty)"
    );
    assert_eq!(
        bad_input("empty.json", " \n"),
        "empty.json: no objects in file (it is empty)"
    );
}

#[test]
fn documents_must_be_mappings() {
    assert_eq!(
        bad_input("cgu.yaml", &format!("{CGU}---\n- just\n- a list\n")),
        "cgu.yaml doc 2: expected a mapping (a Kubernetes object), found a sequence"
    );
}

#[test]
fn kind_api_version_and_name_are_required() {
    let no_kind = CGU.replace("kind: ClusterGroupUpgrade\n", "");
    assert_eq!(
        bad_input("cgu.yaml", &no_kind),
        "cgu.yaml doc 1: missing field `kind`"
    );
    let no_api = CGU.replace("apiVersion: ran.openshift.io/v1alpha1\n", "");
    assert_eq!(
        bad_input("cgu.yaml", &no_api),
        "cgu.yaml doc 1: missing field `apiVersion`"
    );
    let no_name = CGU.replace("  name: cgu-1\n", "");
    assert_eq!(
        bad_input("cgu.yaml", &no_name),
        "cgu.yaml doc 1: metadata: missing field `name`"
    );
}

#[test]
fn duplicate_objects_are_rejected() {
    // The first copy has no namespace: it defaults to `default`, the second copy's namespace.
    let first = CGU.replace("  namespace: default\n", "");
    assert_eq!(
        bad_input("cgu.yaml", &format!("{first}---\n{CLUSTERS}---\n{CGU}")),
        "cgu.yaml doc 4: duplicate ClusterGroupUpgrade default/cgu-1 (first defined in cgu.yaml doc 1)"
    );
}

#[test]
fn unreadable_path_is_named() {
    let out = talm_hub(&["plan", "-f", "/nonexistent/dir/cgu.yaml"], None, None);
    let e = one_line_error(&out);
    assert!(e.starts_with("/nonexistent/dir/cgu.yaml: "), "{e}");
}

#[test]
fn bad_now_is_a_usage_error() {
    let dir = Scratch::new("bad-now");
    dir.file("cgu.yaml", CGU);
    let out = talm_hub(
        &["plan", "-f", "cgu.yaml", "--now", "yesterday"],
        None,
        Some(dir.path()),
    );
    let e = one_line_error(&out);
    assert!(
        e.starts_with("--now: \"yesterday\" is not an RFC 3339 time"),
        "{e}"
    );
}

#[test]
fn bad_update_graph_file_is_an_input_error() {
    let dir = Scratch::new("bad-graph");
    dir.file("cgu.yaml", CGU);
    dir.file("graph.yaml", "- not a mapping\n");
    let out = talm_hub(
        &[
            "plan",
            "-f",
            "cgu.yaml",
            "--now",
            NOW,
            "--update-graph",
            "graph.yaml",
        ],
        None,
        Some(dir.path()),
    );
    let e = one_line_error(&out);
    assert!(
        e.starts_with("--update-graph graph.yaml: expected a mapping"),
        "{e}"
    );
}

fn plan_ok(args: &[&str], stdin: Option<&str>, cwd: Option<&Path>) -> String {
    let out = talm_hub(args, stdin, cwd);
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status.code(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn parse_yaml_docs(yaml: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple(yaml).unwrap()
}

#[test]
fn yaml_output_carries_every_object_and_applies_the_first_reconcile() {
    let foreign = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: keep-me, namespace: x}\nspec: {unknownField: {deep: [1, '2']}}\n";
    let input = format!("{CLUSTERS}---\n{CGU}---\n{foreign}");
    let out = talm_hub(
        &["plan", "-f", "-", "--now", NOW, "-o", "yaml"],
        Some(&input),
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("<stdin> doc 4: apps/v1 Deployment x/keep-me is not read by the engine"),
        "{stderr}"
    );
    let docs = parse_yaml_docs(&text(&out.stdout));
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    // Kind order: ManagedClusters, the CGU, foreign kinds, then events.
    assert_eq!(
        &kinds[..4],
        [
            "ManagedCluster",
            "ManagedCluster",
            "ClusterGroupUpgrade",
            "Deployment"
        ]
    );
    assert!(kinds[4..].iter().all(|k| *k == "Event"), "{kinds:?}");
    let deployment = &docs[3];
    assert_eq!(
        deployment["spec"]["unknownField"]["deep"],
        serde_json::json!([1, "2"])
    );
    assert!(deployment["metadata"].get("uid").is_none());
    let cgu = &docs[2];
    assert_eq!(
        cgu["metadata"]["finalizers"],
        serde_json::json!(["ran.openshift.io/cleanup-finalizer"])
    );
    assert_eq!(cgu["metadata"]["creationTimestamp"], NOW);
    let events: Vec<&serde_json::Value> = docs.iter().filter(|d| d["kind"] == "Event").collect();
    assert!(
        events.iter().any(|e| e["reason"] == "CguCreated"),
        "{events:?}"
    );
    for e in events {
        assert_eq!(e["apiVersion"], "events.k8s.io/v1");
        assert_eq!(e["eventTime"], "2026-01-01T10:00:00.000000Z");
        assert_eq!(e["reportingInstance"], "talm-hub");
        assert_eq!(e["metadata"]["namespace"], "default");
    }
}

#[test]
fn output_fed_back_continues_and_is_stable() {
    let dir = Scratch::new("round-trip");
    dir.file("clusters.yaml", CLUSTERS);
    dir.file("cgu.yml", CGU);
    dir.file("ignored.txt", "not: [yaml");
    let first = plan_ok(
        &["plan", "-f", ".", "--now", NOW, "-o", "yaml"],
        None,
        Some(dir.path()),
    );
    dir.file("step1.yaml", &first);
    let later = "2026-01-01T10:10:00Z";
    let second = plan_ok(
        &["plan", "-f", "step1.yaml", "--now", later, "-o", "yaml"],
        None,
        Some(dir.path()),
    );
    dir.file("step2.yaml", &second);
    let third = plan_ok(
        &["plan", "-f", "step2.yaml", "--now", later, "-o", "yaml"],
        None,
        Some(dir.path()),
    );
    // Objects and events of earlier runs are kept; a run at the same time changes no object.
    let objects = |yaml: &str| -> Vec<serde_json::Value> {
        parse_yaml_docs(yaml)
            .into_iter()
            .filter(|d| d["kind"] != "Event")
            .collect()
    };
    assert_eq!(objects(&second), objects(&third));
    assert!(third.starts_with(&second[..second.find("kind: Event").unwrap_or(second.len())]));
    let events = |yaml: &str| {
        parse_yaml_docs(yaml)
            .into_iter()
            .filter(|d| d["kind"] == "Event")
            .count()
    };
    assert!(events(&third) >= events(&second) && events(&second) >= events(&first));
    // JSON output feeds back the same way.
    let json = plan_ok(
        &["plan", "-f", "step2.yaml", "--now", later, "-o", "json"],
        None,
        Some(dir.path()),
    );
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list["kind"], "List");
    let from_json = plan_ok(
        &["plan", "-f", "-", "--now", later, "-o", "yaml"],
        Some(&json),
        None,
    );
    assert_eq!(objects(&from_json), objects(&third));
}

#[test]
fn table_is_the_default_output() {
    let input = format!("{CLUSTERS}---\n{CGU}");
    let table = plan_ok(&["plan", "-f", "-", "--now", NOW], Some(&input), None);
    assert!(
        table.starts_with("ClusterGroupUpgrade default/cgu-1\n  state:    "),
        "{table}"
    );
    assert!(table.contains("\n  next reconcile: "), "{table}");
    assert!(table.contains("\nEvents emitted: "), "{table}");
}

#[test]
fn json_logs_on_request() {
    let input = format!("{CGU}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\n");
    let out = talm_hub(
        &[
            "plan",
            "-f",
            "-",
            "--now",
            NOW,
            "--log-format",
            "json",
            "-o",
            "json",
        ],
        Some(&input),
        None,
    );
    assert!(out.status.success());
    let stderr = text(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["level"] == "WARN"), "{stderr}");
    assert!(lines.iter().any(|l| l["level"] == "INFO"), "{stderr}");
    let quiet = talm_hub(
        &["plan", "-f", "-", "--now", NOW, "--log-level", "error"],
        Some(&input),
        None,
    );
    assert!(quiet.status.success());
    assert!(quiet.stderr.is_empty(), "{}", text(&quiet.stderr));
}

#[test]
fn crds_check_passes_on_the_committed_manifests_and_fails_on_drift() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ok = talm_hub(&["crds", "--check"], None, Some(&repo));
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let dir = Scratch::new("crds");
    let dir_s = dir.path().to_string_lossy().into_owned();
    let missing = talm_hub(&["crds", "--check", "--dir", &dir_s], None, None);
    assert_eq!(missing.status.code(), Some(1));
    let e = text(&missing.stderr);
    for f in [
        "clustergroupupgrades.ran.openshift.io.yaml",
        "precachingconfigs.ran.openshift.io.yaml",
        "spokeagents.talm.dev.yaml",
    ] {
        assert!(e.contains(&format!("{f} (missing)")), "{e}");
    }
    let written = talm_hub(&["crds", "--dir", &dir_s], None, None);
    assert!(written.status.success());
    for f in [
        "clustergroupupgrades.ran.openshift.io.yaml",
        "precachingconfigs.ran.openshift.io.yaml",
        "spokeagents.talm.dev.yaml",
    ] {
        let generated = std::fs::read_to_string(dir.path().join(f)).unwrap();
        let committed = std::fs::read_to_string(repo.join("deploy/crds").join(f)).unwrap();
        assert_eq!(generated, committed, "{f}");
    }
    assert!(
        talm_hub(&["crds", "--check", "--dir", &dir_s], None, None)
            .status
            .success()
    );
}

/// examples/precache-budget/ (docs/contract.md §4.4): two site budgets and a registry budget
/// over six clusters. The scheduler keeps the three let in (the mirror's limit), the table
/// shows their progress and the queue, and once the canary finishes the next cluster of
/// batch 1 goes, before any of batch 2.
#[test]
fn precache_budget_example_admits_in_order_and_shows_progress() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/precache-budget");
    let example = example.to_str().unwrap();
    let now = "2026-03-02T10:00:00Z";
    let table = plan_ok(&["plan", "-f", example, "--now", now], None, None);
    let line = |cluster: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{cluster} ")))
            .unwrap_or_else(|| panic!("no progress line for {cluster}:\n{table}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(
        line("sno-east-1"),
        [
            "sno-east-1",
            "downloading",
            "30Mi",
            "of",
            "120Mi",
            "(25%)",
            "10Mi/s",
            "10Mi/s",
            "2026-03-02T10:00:09Z"
        ]
    );
    assert_eq!(line("sno-west-2")[..2], ["sno-west-2", "queued"]);
    assert!(
        table.contains("3 clusters queued by PrecacheBudgets"),
        "{table}"
    );
    assert!(
        table.contains("registry mirror.example.com:5000: 3 active, 2 queued, allotted 22Mi/s"),
        "{table}"
    );

    let yaml = plan_ok(
        &["plan", "-f", example, "--now", now, "-o", "yaml"],
        None,
        None,
    );
    let mut docs = parse_yaml_docs(&yaml);
    let split = |docs: &[serde_json::Value]| -> (Vec<String>, Vec<String>) {
        let mut admitted = Vec::new();
        let mut queued = Vec::new();
        for d in docs.iter().filter(|d| d["kind"] == "SpokeAgent") {
            let name = d["metadata"]["name"].as_str().unwrap().to_string();
            if d["spec"]["precache"]["hold"] == true {
                queued.push(name);
            } else {
                admitted.push(name);
            }
        }
        (admitted, queued)
    };
    assert_eq!(
        split(&docs),
        (
            vec![
                "sno-east-1".into(),
                "sno-east-2".into(),
                "sno-west-1".into()
            ],
            vec![
                "sno-east-3".into(),
                "sno-west-2".into(),
                "sno-west-3".into()
            ]
        )
    );
    let budget = |docs: &[serde_json::Value], name: &str| -> serde_json::Value {
        docs.iter()
            .find(|d| d["kind"] == "PrecacheBudget" && d["metadata"]["name"] == name)
            .unwrap()["status"]
            .clone()
    };
    let east = budget(&docs, "site-east");
    assert_eq!(
        (&east["active"], &east["queued"]),
        (&serde_json::json!(2), &serde_json::json!(1))
    );
    assert_eq!(east["bandwidthAllotted"], 20 << 20);

    // The canary finishes: sno-east-3 (batch 1) is let in; sno-west-2 (batch 2) still waits for
    // the mirror.
    for d in docs.iter_mut() {
        if d["kind"] == "SpokeAgent" && d["metadata"]["name"] == "sno-east-1" {
            d["status"]["precache"]["state"] = "Succeeded".into();
        }
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs});
    let next = plan_ok(
        &[
            "plan",
            "-f",
            "-",
            "--now",
            "2026-03-02T10:01:00Z",
            "-o",
            "yaml",
        ],
        Some(&list.to_string()),
        None,
    );
    let docs = parse_yaml_docs(&next);
    assert_eq!(
        split(&docs),
        (
            vec![
                "sno-east-1".into(),
                "sno-east-2".into(),
                "sno-east-3".into(),
                "sno-west-1".into()
            ],
            vec!["sno-west-2".into(), "sno-west-3".into()]
        )
    );
    let cap = |name: &str| {
        docs.iter()
            .find(|d| d["kind"] == "SpokeAgent" && d["metadata"]["name"] == name)
            .unwrap()["spec"]["precache"]["rateLimitBytesPerSecond"]
            .clone()
    };
    assert_eq!(cap("sno-east-3"), serde_json::json!(10 << 20));
    assert_eq!(cap("sno-west-1"), serde_json::json!(2 << 20));
    let east = budget(&docs, "site-east");
    assert_eq!(
        (&east["active"], &east["done"]),
        (&serde_json::json!(2), &serde_json::json!(1))
    );
    // The output is a fixed point: fed back at the same time, nothing changes.
    let again = plan_ok(
        &["plan", "-f", "-", "--now", "2026-03-02T10:01:00Z"],
        Some(&next),
        None,
    );
    assert!(again.contains("Object changes: none"), "{again}");
}
