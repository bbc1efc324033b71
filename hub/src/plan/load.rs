//! Reading `plan` input: files, directories and stdin holding multi-document YAML, JSON, or
//! `kind: List` documents (what `oc get -o yaml` writes), turned into [`Loaded`] objects.
//!
//! Each object stays a raw JSON value (so fields talm does not model survive to the output);
//! objects of the kinds the engine reads are also parsed into their typed views here, so bad
//! input fails before the engine runs, with one line naming file, document and field path.
//!
//! Hostile input is refused in memory bounded by its size: at most [`MAX_INPUT_BYTES`] and
//! [`MAX_OBJECTS`] in all, YAML aliases counted at their expanded size,
//! duplicate keys refused in JSON as in YAML. The objects the engine reads are checked as the
//! API server and TALM's validation would (names, label selectors, `maxConcurrency`, repeated
//! `managedPolicies`).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use talm_shared::api::checks;
use talm_shared::yaml::DocError;

use super::store::{Kind, Typed};

/// The most input `plan` reads, all files and stdin together: 256 MiB.
pub const MAX_INPUT_BYTES: u64 = 256 * 1024 * 1024;

/// The most objects `plan` reads, all inputs together (the items of a `kind: List` count,
/// the List itself does not). A 10,000-cluster hub with 20 policies is about 210,000.
pub const MAX_OBJECTS: usize = 500_000;

/// How much input one run accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Limits {
    /// Bytes, all inputs together.
    bytes: u64,
    /// Objects, all inputs together.
    objects: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            bytes: MAX_INPUT_BYTES,
            objects: MAX_OBJECTS,
        }
    }
}

impl Limits {
    /// The byte limit as the README states it.
    fn bytes_shown(&self) -> String {
        if self.bytes.is_multiple_of(1024 * 1024) {
            format!("{} MiB", self.bytes / (1024 * 1024))
        } else {
            format!("{} bytes", self.bytes)
        }
    }
}

/// Where an object came from: file (as given on the command line), 1-based document index
/// (empty documents are not counted) and, for `kind: List` documents, the 0-based item index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file as given (`<stdin>` for `-`).
    pub file: String,
    /// 1-based index of the document in the file.
    pub doc: usize,
    /// Index in `items` when the document is a `List`.
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} doc {}", self.file, self.doc)
    }
}

impl Origin {
    /// Prefixes a field path with `items[i].` for List items.
    fn field(&self, path: &str) -> String {
        match (self.item, path) {
            (None, p) => p.to_string(),
            (Some(i), "") => format!("items[{i}]"),
            (Some(i), p) => format!("items[{i}].{p}"),
        }
    }

    /// `"<path>: <message>"`, or just the message at the document root.
    fn at(&self, path: &str, message: impl fmt::Display) -> InputError {
        let field = self.field(path);
        let message = if field.is_empty() {
            message.to_string()
        } else {
            format!("{field}: {message}")
        };
        InputError::Invalid {
            origin: self.clone(),
            message,
        }
    }
}

/// Bad `plan` input. Every variant renders as one line.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A path could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The path as given.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML or JSON.
    #[error("{path}: {message}")]
    Syntax {
        /// The path as given.
        path: String,
        /// The parser's message, with line and column when known.
        message: String,
    },
    /// The file holds no document at all.
    #[error("{path}: no objects in file (it is empty)")]
    Empty {
        /// The path as given.
        path: String,
    },
    /// A directory holds no `*.yaml`, `*.yml` or `*.json` file.
    #[error("{path}: no *.yaml, *.yml or *.json files in directory")]
    EmptyDir {
        /// The path as given.
        path: String,
    },
    /// `-` was given more than once.
    #[error("-: stdin can only be read once")]
    StdinTwice,
    /// The inputs together are larger than [`MAX_INPUT_BYTES`].
    #[error("{path}: the input is larger than {limit} (all files together), the most `plan` reads")]
    TooLarge {
        /// The input that crossed the limit.
        path: String,
        /// The limit, e.g. `256 MiB`.
        limit: String,
    },
    /// The inputs together hold more than [`MAX_OBJECTS`] objects.
    #[error(
        "{path}: the input holds more than {limit} objects (all files together), the most `plan` reads"
    )]
    TooManyObjects {
        /// The input that crossed the limit.
        path: String,
        /// The limit.
        limit: usize,
    },
    /// A document is not a valid object.
    #[error("{origin}: {message}")]
    Invalid {
        /// Where the document is.
        origin: Origin,
        /// `"<field path>: <problem>"`.
        message: String,
    },
    /// Two objects have the same kind, namespace and name.
    #[error("{origin}: duplicate {what} (first defined in {first})")]
    Duplicate {
        /// The second occurrence.
        origin: Origin,
        /// `Kind namespace/name`.
        what: String,
        /// The first occurrence.
        first: Origin,
    },
    /// The `--update-graph` file is unreadable or has the wrong shape.
    #[error("--update-graph {path}: {message}")]
    UpdateGraph {
        /// The file as given.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// One object read from the input.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Where it came from.
    pub origin: Origin,
    /// Its kind class.
    pub kind: Kind,
    /// The raw object (with `metadata.namespace` defaulted for namespaced known kinds).
    pub raw: Map<String, Value>,
    /// The typed view, for kinds the engine reads.
    pub typed: Typed,
}

/// The kind of document syntax to parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Syntax {
    Yaml,
    Json,
}

/// Reads every object from `paths` (`-` reads `stdin`). Directories contribute their
/// `*.yaml`, `*.yml` and `*.json` files sorted by name (not recursive). At most
/// [`MAX_INPUT_BYTES`] and [`MAX_OBJECTS`] in all.
pub fn load_paths(paths: &[PathBuf], stdin: &mut dyn Read) -> Result<Vec<Loaded>, InputError> {
    let mut reader = Reader {
        limits: Limits::default(),
        bytes: 0,
        out: Vec::new(),
    };
    let mut stdin_read = false;
    for path in paths {
        if path.as_os_str() == "-" {
            if stdin_read {
                return Err(InputError::StdinTwice);
            }
            stdin_read = true;
            reader.read("<stdin>", stdin, None)?;
            continue;
        }
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| InputError::Read {
            path: shown.clone(),
            source,
        })?;
        if meta.is_dir() {
            let files = dir_files(path).map_err(|source| InputError::Read {
                path: shown.clone(),
                source,
            })?;
            if files.is_empty() {
                return Err(InputError::EmptyDir { path: shown });
            }
            for file in files {
                reader.read_file(&file)?;
            }
        } else {
            reader.read_file(path)?;
        }
    }
    Ok(reader.out)
}

/// The inputs read so far, against the limits.
struct Reader {
    limits: Limits,
    /// Bytes read so far.
    bytes: u64,
    out: Vec<Loaded>,
}

impl Reader {
    fn too_large(&self, path: &str) -> InputError {
        InputError::TooLarge {
            path: path.into(),
            limit: self.limits.bytes_shown(),
        }
    }

    fn read_file(&mut self, path: &Path) -> Result<(), InputError> {
        let shown = path.display().to_string();
        let io_error = |source| InputError::Read {
            path: shown.clone(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io_error)?;
        // Refuse before reading when the size is known; `read` still stops at the limit (the
        // file may grow, or be a device).
        let len = file.metadata().map_err(io_error)?.len();
        if self.bytes.saturating_add(len) > self.limits.bytes {
            return Err(self.too_large(&shown));
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        self.read(&shown, &mut file, ext.as_deref())
    }

    /// Reads one input up to the byte limit, then parses and checks its objects.
    fn read(
        &mut self,
        shown: &str,
        input: &mut dyn Read,
        ext: Option<&str>,
    ) -> Result<(), InputError> {
        let allowed = self.limits.bytes.saturating_sub(self.bytes);
        let mut bytes = Vec::new();
        input
            .take(allowed.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|source| InputError::Read {
                path: shown.into(),
                source,
            })?;
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if len > allowed {
            return Err(self.too_large(shown));
        }
        self.bytes += len;
        let text = String::from_utf8(bytes).map_err(|e| InputError::Syntax {
            path: shown.into(),
            message: format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        })?;
        let objects = self.limits.objects.saturating_sub(self.out.len());
        let loaded = load_text(shown, &text, sniff(ext, &text), objects).map_err(|e| match e {
            // The message states the limit for all inputs, not what was left of it.
            InputError::TooManyObjects { path, .. } => InputError::TooManyObjects {
                path,
                limit: self.limits.objects,
            },
            other => other,
        })?;
        // The parser's count is exact for Lists and plain documents; this catches the rest.
        if self.out.len().saturating_add(loaded.len()) > self.limits.objects {
            return Err(InputError::TooManyObjects {
                path: shown.into(),
                limit: self.limits.objects,
            });
        }
        self.out.extend(loaded);
        Ok(())
    }
}

/// The `*.yaml`, `*.yml` and `*.json` files of a directory, sorted by name.
fn dir_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "yaml" | "yml" | "json"));
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// `.json` files are JSON, `.yaml`/`.yml` files YAML; anything else (stdin included) is JSON
/// when it starts with `{` or `[`, YAML otherwise.
fn sniff(ext: Option<&str>, text: &str) -> Syntax {
    match ext {
        Some("json") => Syntax::Json,
        Some("yaml" | "yml") => Syntax::Yaml,
        _ if text.trim_start().starts_with(['{', '[']) => Syntax::Json,
        _ => Syntax::Yaml,
    }
}

/// Parses the objects of YAML text as if read from a file called `file` (tests, tools), with
/// the default object limit.
pub fn load_yaml_str(file: &str, text: &str) -> Result<Vec<Loaded>, InputError> {
    load_text(file, text, Syntax::Yaml, MAX_OBJECTS)
}

/// Parses every object of one file's text, refusing more than `max_objects`. `file` is how the
/// file is named in messages.
fn load_text(
    file: &str,
    text: &str,
    syntax: Syntax,
    max_objects: usize,
) -> Result<Vec<Loaded>, InputError> {
    let docs = parse_documents(file, text, syntax, max_objects)?;
    if docs.is_empty() {
        return Err(InputError::Empty { path: file.into() });
    }
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let origin = Origin {
            file: file.into(),
            doc: i + 1,
            item: None,
        };
        load_document(origin, doc, &mut out)?;
    }
    Ok(out)
}

fn parse_documents(
    file: &str,
    text: &str,
    syntax: Syntax,
    max_objects: usize,
) -> Result<Vec<Value>, InputError> {
    let parsed = match syntax {
        Syntax::Json => talm_shared::yaml::json_values(text, max_objects),
        Syntax::Yaml => talm_shared::yaml::from_multiple_counted(text, max_objects),
    };
    parsed.map_err(|e| match e {
        DocError::Syntax(message) => {
            let what = match syntax {
                Syntax::Json => "JSON",
                Syntax::Yaml => "YAML",
            };
            InputError::Syntax {
                path: file.into(),
                message: format!("invalid {what}: {message}"),
            }
        }
        DocError::Expansion { .. } => InputError::Syntax {
            path: file.into(),
            message: e.to_string(),
        },
        DocError::TooManyObjects { limit } => InputError::TooManyObjects {
            path: file.into(),
            limit,
        },
    })
}

/// A document: one object, or a `kind: List` of objects.
fn load_document(origin: Origin, doc: Value, out: &mut Vec<Loaded>) -> Result<(), InputError> {
    let Value::Object(mut map) = doc else {
        return Err(origin.at(
            "",
            format!(
                "expected a mapping (a Kubernetes object), found {}",
                type_name(&doc)
            ),
        ));
    };
    if map.get("kind").and_then(Value::as_str) == Some("List") {
        let items = match map.remove("items") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(origin.at(
                    "items",
                    format!("expected a sequence, found {}", type_name(&other)),
                ));
            }
        };
        for (i, item) in items.into_iter().enumerate() {
            let item_origin = Origin {
                item: Some(i),
                ..origin.clone()
            };
            let Value::Object(obj) = item else {
                return Err(item_origin.at(
                    "",
                    format!(
                        "expected a mapping (a Kubernetes object), found {}",
                        type_name(&item)
                    ),
                ));
            };
            if obj.get("kind").and_then(Value::as_str) == Some("List") {
                return Err(item_origin.at("kind", "a List inside a List is not supported"));
            }
            out.push(load_object(item_origin, obj)?);
        }
        return Ok(());
    }
    out.push(load_object(origin, map)?);
    Ok(())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

fn required_str<'a>(
    origin: &Origin,
    map: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a str, InputError> {
    match map.get(key) {
        None | Some(Value::Null) => Err(origin.at(path, format!("missing field `{key}`"))),
        Some(Value::String(s)) if s.is_empty() => {
            Err(origin.at(&join(path, key), "must not be empty"))
        }
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(origin.at(
            &join(path, key),
            format!("invalid type: {}, expected a string", type_name(other)),
        )),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Validates one object's envelope, defaults its namespace and parses its typed view.
fn load_object(origin: Origin, mut raw: Map<String, Value>) -> Result<Loaded, InputError> {
    let api_version = required_str(&origin, &raw, "apiVersion", "")?.to_string();
    let kind_name = required_str(&origin, &raw, "kind", "")?.to_string();
    let metadata = match raw.get_mut("metadata") {
        None | Some(Value::Null) => return Err(origin.at("", "missing field `metadata`")),
        Some(Value::Object(m)) => m,
        Some(other) => {
            let found = type_name(other);
            return Err(origin.at(
                "metadata",
                format!("invalid type: {found}, expected a mapping"),
            ));
        }
    };
    required_str(&origin, metadata, "name", "metadata")?;
    match metadata.get("namespace") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(other) => {
            let found = type_name(other);
            return Err(origin.at(
                "metadata.namespace",
                format!("invalid type: {found}, expected a string"),
            ));
        }
    }
    let kind = Kind::classify(&api_version, &kind_name);
    if kind.is_namespaced() {
        let ns = metadata
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if ns.is_empty() {
            metadata.insert("namespace".into(), Value::String("default".into()));
        }
    }
    let typed = Typed::parse(kind, &raw).map_err(|e| origin.at(&e.path, e.message))?;
    if kind.is_typed() {
        check_typed(kind, &raw, &typed).map_err(|(path, message)| origin.at(&path, message))?;
    }
    if kind == Kind::Other {
        let ns = raw
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .map(|ns| format!("{ns}/"))
            .unwrap_or_default();
        let name = raw
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        tracing::warn!(
            "{origin}: {api_version} {kind_name} {ns}{name} is not read by the engine; carried through unchanged"
        );
    }
    Ok(Loaded {
        origin,
        kind,
        raw,
        typed,
    })
}

/// The checks made on the objects the engine reads, as `(field path, problem)`: names as the
/// API server checks them (so no invalid name reaches the names talm generates), label
/// selectors as apimachinery parses them, and talm's own CGU checks that the operator reports
/// as `Validated=False` (a negative `maxConcurrency`, a policy listed twice): `plan` exits 2
/// on them instead.
fn check_typed(
    kind: Kind,
    raw: &Map<String, Value>,
    typed: &Typed,
) -> Result<(), (String, String)> {
    let meta_str = |key: &str| {
        raw.get("metadata")
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let name = meta_str("name");
    if !checks::is_dns1123_subdomain(name) {
        return Err((
            "metadata.name".into(),
            format!(
                "{name:?} is not a valid name: {}",
                checks::DNS1123_SUBDOMAIN
            ),
        ));
    }
    let namespace = meta_str("namespace");
    if kind.is_namespaced() && !checks::is_dns1123_label(namespace) {
        return Err((
            "metadata.namespace".into(),
            format!(
                "{namespace:?} is not a valid namespace: {}",
                checks::DNS1123_LABEL
            ),
        ));
    }
    let Typed::ClusterGroupUpgrade(cgu) = typed else {
        return Ok(());
    };
    let spec = &cgu.spec;
    for (i, selector) in spec.cluster_label_selectors.iter().flatten().enumerate() {
        checks::check_label_selector(selector).map_err(|e| {
            (
                format!("spec.clusterLabelSelectors[{i}].{}", e.path),
                e.message,
            )
        })?;
    }
    let max = spec.remediation_strategy.max_concurrency;
    if max < 0 {
        return Err((
            "spec.remediationStrategy.maxConcurrency".into(),
            talm_hub_core::validate::max_concurrency_problem(max),
        ));
    }
    if let Some(v) = &spec.remediation_strategy.max_failures {
        talm_hub_core::validate::failure_budget(v, 0)
            .map_err(|e| ("spec.remediationStrategy.maxFailures".to_string(), e))?;
    }
    talm_hub_core::windows::schedule(spec).map_err(|e| (e.path, e.problem))?;
    if let Some((field, problem)) = talm_hub_core::recovery::spec_problem(spec) {
        return Err((field.into(), problem));
    }
    let managed = spec.managed_policies.as_deref().unwrap_or_default();
    if let Some((i, name)) = talm_hub_core::validate::repeated_names(managed).first() {
        return Err((
            format!("spec.managedPolicies[{i}]"),
            format!("{name:?} is listed more than once"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    const CGU: &str = "apiVersion: ran.openshift.io/v1alpha1
kind: ClusterGroupUpgrade
metadata:
  name: cgu-1
spec:
  clusters: [spoke1]
  remediationStrategy:
    maxConcurrency: 1
";

    const CLUSTER: &str = "apiVersion: cluster.open-cluster-management.io/v1
kind: ManagedCluster
metadata:
  name: spoke1
";

    fn err(text: &str) -> String {
        load_yaml_str("cgu.yaml", text).unwrap_err().to_string()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("talm-hub-load-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(loaded: &[Loaded]) -> Vec<String> {
        loaded
            .iter()
            .map(|l| l.raw["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn multi_document_yaml_skips_empty_documents() {
        let text = format!("---\n{CGU}---\n# only a comment\n---\n{CLUSTER}");
        let loaded = load_yaml_str("in.yaml", &text).unwrap();
        assert_eq!(names(&loaded), ["cgu-1", "spoke1"]);
        assert_eq!(loaded[0].kind, Kind::ClusterGroupUpgrade);
        assert_eq!(loaded[1].kind, Kind::ManagedCluster);
        assert_eq!(loaded[1].origin.to_string(), "in.yaml doc 2");
        assert!(matches!(loaded[0].typed, Typed::ClusterGroupUpgrade(_)));
    }

    #[test]
    fn namespaced_kinds_default_to_the_default_namespace() {
        let text = format!(
            "{CGU}---\n{CLUSTER}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\n"
        );
        let loaded = load_yaml_str("in.yaml", &text).unwrap();
        assert_eq!(loaded[0].raw["metadata"]["namespace"], "default");
        let Typed::ClusterGroupUpgrade(cgu) = &loaded[0].typed else {
            panic!("not a CGU")
        };
        assert_eq!(cgu.metadata.namespace.as_deref(), Some("default"));
        assert!(
            loaded[1].raw["metadata"].get("namespace").is_none(),
            "ManagedCluster is cluster-scoped"
        );
        assert!(
            loaded[2].raw["metadata"].get("namespace").is_none(),
            "unknown kinds are left alone"
        );
        assert_eq!(loaded[2].kind, Kind::Other);
    }

    #[test]
    fn list_documents_yield_their_items() {
        let text = format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}\n- {}\n",
            serde_json::to_string(&serde_saphyr::from_str::<Value>(CGU).unwrap()).unwrap(),
            serde_json::to_string(&serde_saphyr::from_str::<Value>(CLUSTER).unwrap()).unwrap(),
        );
        let loaded = load_yaml_str("list.yaml", &text).unwrap();
        assert_eq!(names(&loaded), ["cgu-1", "spoke1"]);
        assert_eq!(loaded[1].origin.item, Some(1));
        let empty = load_yaml_str("list.yaml", "apiVersion: v1\nkind: List\nitems: []\n").unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn errors_in_list_items_name_the_item() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n- apiVersion: ran.openshift.io/v1alpha1\n  kind: ClusterGroupUpgrade\n  metadata: {name: c}\n  spec: {remediationStrategy: {maxConcurrency: x}}\n";
        assert_eq!(
            err(text),
            "cgu.yaml doc 1: items[1].spec.remediationStrategy.maxConcurrency: invalid type: string \"x\", expected i32"
        );
        assert_eq!(
            err("kind: List\nitems: [3]\n"),
            "cgu.yaml doc 1: items[0]: expected a mapping (a Kubernetes object), found a number"
        );
        assert_eq!(
            err("kind: List\nitems: {a: 1}\n"),
            "cgu.yaml doc 1: items: expected a sequence, found a mapping"
        );
    }

    #[test]
    fn json_files_and_json_on_stdin() {
        let dir = scratch("json");
        let cgu: Value = serde_saphyr::from_str(CGU).unwrap();
        let cluster: Value = serde_saphyr::from_str(CLUSTER).unwrap();
        let file = dir.join("objs.json");
        std::fs::write(&file, format!("{cgu}\n{cluster}\n")).unwrap();
        let loaded = load_paths(&[file], &mut std::io::empty()).unwrap();
        assert_eq!(names(&loaded), ["cgu-1", "spoke1"]);
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [cgu, cluster]});
        let mut stdin = Cursor::new(serde_json::to_string_pretty(&list).unwrap());
        let loaded = load_paths(&[PathBuf::from("-")], &mut stdin).unwrap();
        assert_eq!(names(&loaded), ["cgu-1", "spoke1"]);
        assert_eq!(loaded[0].origin.file, "<stdin>");
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{\"apiVersion\": \"v1\",\n \"kind\": }").unwrap();
        let e = load_paths(&[bad], &mut std::io::empty())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.json: invalid JSON:") && e.contains("line 2"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn yaml_on_stdin_and_stdin_only_once() {
        let mut stdin = Cursor::new(CGU);
        let loaded = load_paths(&[PathBuf::from("-")], &mut stdin).unwrap();
        assert_eq!(names(&loaded), ["cgu-1"]);
        let e = load_paths(
            &[PathBuf::from("-"), PathBuf::from("-")],
            &mut Cursor::new(CGU),
        )
        .unwrap_err();
        assert!(matches!(e, InputError::StdinTwice));
    }

    #[test]
    fn directories_contribute_their_yaml_and_json_files_by_name() {
        let dir = scratch("dir");
        std::fs::write(dir.join("b.yaml"), CLUSTER).unwrap();
        std::fs::write(dir.join("a.yml"), CGU).unwrap();
        std::fs::write(
            dir.join("c.json"),
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}}"#,
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), "not: [yaml").unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/x.yaml"), "not: [yaml").unwrap();
        let loaded = load_paths(std::slice::from_ref(&dir), &mut std::io::empty()).unwrap();
        assert_eq!(names(&loaded), ["cgu-1", "spoke1", "cm"]);
        assert!(
            loaded[0].origin.file.ends_with("a.yml"),
            "{}",
            loaded[0].origin.file
        );
        let empty = scratch("emptydir");
        let e = load_paths(std::slice::from_ref(&empty), &mut std::io::empty()).unwrap_err();
        assert!(matches!(e, InputError::EmptyDir { .. }), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(empty).unwrap();
    }

    #[test]
    fn unreadable_paths_are_named() {
        let e = load_paths(
            &[PathBuf::from("/nonexistent/cgu.yaml")],
            &mut std::io::empty(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/cgu.yaml: "), "{e}");
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let e = err("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [a\n");
        assert!(e.starts_with("cgu.yaml: invalid YAML: "), "{e}");
        assert!(e.contains("line "), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let e = err("a: b: c\n");
        assert!(e.contains("line 1, column 5"), "{e}");
    }

    #[test]
    fn empty_files_are_errors() {
        assert_eq!(err(""), "cgu.yaml: no objects in file (it is empty)");
        assert_eq!(
            err("# nothing\n---\n"),
            "cgu.yaml: no objects in file (it is empty)"
        );
    }

    #[test]
    fn documents_must_be_objects_with_an_envelope() {
        assert_eq!(
            err(&format!("{CGU}---\njust a string\n")),
            "cgu.yaml doc 2: expected a mapping (a Kubernetes object), found a string"
        );
        assert_eq!(
            err("- a\n"),
            "cgu.yaml doc 1: expected a mapping (a Kubernetes object), found a sequence"
        );
        assert_eq!(
            err("kind: ConfigMap\nmetadata: {name: a}\n"),
            "cgu.yaml doc 1: missing field `apiVersion`"
        );
        assert_eq!(
            err("apiVersion: v1\nmetadata: {name: a}\n"),
            "cgu.yaml doc 1: missing field `kind`"
        );
        assert_eq!(
            err("apiVersion: v1\nkind: 3\nmetadata: {name: a}\n"),
            "cgu.yaml doc 1: kind: invalid type: a number, expected a string"
        );
        assert_eq!(
            err("apiVersion: v1\nkind: ConfigMap\n"),
            "cgu.yaml doc 1: missing field `metadata`"
        );
        assert_eq!(
            err("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n"),
            "cgu.yaml doc 1: metadata: missing field `name`"
        );
        assert_eq!(
            err("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ''}\n"),
            "cgu.yaml doc 1: metadata.name: must not be empty"
        );
        assert_eq!(
            err("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: [x]}\n"),
            "cgu.yaml doc 1: metadata.namespace: invalid type: a sequence, expected a string"
        );
    }

    #[test]
    fn typed_errors_name_the_field_path() {
        let wrong_type = CGU.replace("maxConcurrency: 1", "maxConcurrency: \"x\"");
        assert_eq!(
            err(&format!("{CLUSTER}---\n{wrong_type}")),
            "cgu.yaml doc 2: spec.remediationStrategy.maxConcurrency: invalid type: string \"x\", expected i32"
        );
        let unknown = CGU.replace(
            "  clusters: [spoke1]\n",
            "  clusters: [spoke1]\n  maxConcurency: 3\n",
        );
        let e = err(&unknown);
        assert!(
            e.starts_with("cgu.yaml doc 1: spec.maxConcurency: unknown field `maxConcurency`"),
            "{e}"
        );
        let missing = CGU.replace("    maxConcurrency: 1\n", "    timeout: 5\n");
        assert_eq!(
            err(&missing),
            "cgu.yaml doc 1: spec.remediationStrategy: missing field `maxConcurrency`"
        );
        let labels = "apiVersion: cluster.open-cluster-management.io/v1\nkind: ManagedCluster\nmetadata:\n  name: s\n  labels: {a: [1]}\n";
        let e = err(labels);
        assert!(
            e.starts_with("cgu.yaml doc 1: metadata.labels.a: invalid type: sequence"),
            "{e}"
        );
    }

    #[test]
    fn huge_numbers_are_reported_as_out_of_range() {
        let huge = CGU.replace("maxConcurrency: 1", "maxConcurrency: 99999999999999999999");
        assert_eq!(
            err(&huge),
            "cgu.yaml doc 1: spec.remediationStrategy.maxConcurrency: number 100000000000000000000 is out of range, expected i32"
        );
        let big = CGU.replace("maxConcurrency: 1", "maxConcurrency: 99999999999");
        assert_eq!(
            err(&big),
            "cgu.yaml doc 1: spec.remediationStrategy.maxConcurrency: invalid value: integer `99999999999`, expected i32"
        );
        let fraction = CGU.replace("maxConcurrency: 1", "maxConcurrency: 1.5");
        assert_eq!(
            err(&fraction),
            "cgu.yaml doc 1: spec.remediationStrategy.maxConcurrency: invalid type: floating point `1.5`, expected i32"
        );
    }

    #[test]
    fn large_streams_load() {
        let docs: Vec<String> = (0..3000)
            .map(|i| CLUSTER.replace("spoke1", &format!("spoke{i}")))
            .collect();
        let loaded = load_yaml_str("big.yaml", &docs.join("---\n")).unwrap();
        assert_eq!(loaded.len(), 3000);
    }

    #[test]
    fn non_utf8_files_are_errors() {
        let dir = scratch("utf8");
        let file = dir.join("bin.yaml");
        std::fs::write(&file, [b'a', b':', b' ', 0xff, b'\n']).unwrap();
        let e = load_paths(&[file], &mut std::io::empty())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bin.yaml: not UTF-8"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    // ----- issue 14: hostile input ------------------------------------------------------------

    /// Alias bombs shaped like issue 14's: 99 aliases of one 256 KiB label value (under
    /// serde-saphyr's alias/anchor ratio check, which starts at 100 aliases), and five levels
    /// of nine aliases each (9^5 copies of a 1 KiB value). 25 MiB and 57 MiB once expanded.
    fn alias_bombs() -> [String; 2] {
        let big = "x".repeat(256 * 1024);
        let mut wide = format!("{CLUSTER}  labels:\n    a: &s {big}\n  annotations:\n");
        for i in 0..99 {
            wide.push_str(&format!("    k{i}: *s\n"));
        }
        let mut nested = format!(
            "{CLUSTER}  annotations:\n    l0: &l0 {}\n",
            "y".repeat(1024)
        );
        for i in 1..=5 {
            let p = format!("*l{}", i - 1);
            nested.push_str(&format!("    l{i}: &l{i} [{}]\n", vec![p; 9].join(", ")));
        }
        [wide, nested]
    }

    #[test]
    fn aliases_count_at_their_expanded_size() {
        for bomb in alias_bombs() {
            let e = err(&bomb);
            assert!(
                e.starts_with("cgu.yaml: aliases expand the document beyond "),
                "{e}"
            );
        }
        // Anchors that stay small are fine (anchors are per document: a List shares them).
        let shared = "kind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: a, labels: &l {k: v}}}\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b, labels: *l}}\n";
        let loaded = load_yaml_str("in.yaml", shared).unwrap();
        assert_eq!(loaded[1].raw["metadata"]["labels"]["k"], "v");
    }

    #[test]
    fn inputs_over_the_size_limit_are_refused_before_reading() {
        let dir = scratch("huge");
        let file = dir.join("huge.yaml");
        // Sparse: no disk space, and nothing is read.
        std::fs::File::create(&file)
            .unwrap()
            .set_len(256 * 1024 * 1024 + 1)
            .unwrap();
        let e = load_paths(std::slice::from_ref(&file), &mut std::io::empty())
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("huge.yaml: the input is larger than 256 MiB (all files together), the most `plan` reads"),
            "{e}"
        );
        // Stdin is read up to the limit, not to its end.
        let mut endless = std::io::repeat(b' ').take(256 * 1024 * 1024 + 1);
        let e = load_paths(&[PathBuf::from("-")], &mut endless)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("<stdin>: the input is larger than 256 MiB"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn inputs_over_the_object_limit_are_refused() {
        let dir = scratch("many");
        // 500,001 List items in JSON; counted while parsing, not after.
        let items = vec!["{}"; 500_001].join(",");
        let file = dir.join("many.json");
        std::fs::write(
            &file,
            format!("{{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [{items}]}}"),
        )
        .unwrap();
        let e = load_paths(std::slice::from_ref(&file), &mut std::io::empty())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{}: the input holds more than 500000 objects (all files together), the most `plan` reads",
                file.display()
            )
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn duplicate_keys_are_refused_in_json_as_in_yaml() {
        let dir = scratch("dupkeys");
        let file = dir.join("dup.json");
        std::fs::write(
            &file,
            "{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\",\n \"metadata\": {\"name\": \"a\", \"name\": \"b\"}}",
        )
        .unwrap();
        let e = load_paths(&[file], &mut std::io::empty())
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("dup.json: invalid JSON: duplicate key `name` at line 2 column 33"),
            "{e}"
        );
        let e = err("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  name: b\n");
        assert!(
            e.starts_with("cgu.yaml: invalid YAML: duplicate key `name` at line "),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn label_selectors_are_checked_naming_the_field() {
        let sel = |expr: &str| {
            CGU.replace(
                "  clusters: [spoke1]\n",
                &format!("  clusterLabelSelectors:\n  - matchLabels: {{a: b}}\n  - matchExpressions:\n    - {{key: a, operator: In, values: [x]}}\n    - {expr}\n"),
            )
        };
        let field = "spec.clusterLabelSelectors[1].matchExpressions[1]";
        assert_eq!(
            err(&sel("{key: a, operator: Bogus, values: [x]}")),
            format!(
                "cgu.yaml doc 1: {field}.operator: unknown operator \"Bogus\" (expected In, NotIn, Exists or DoesNotExist)"
            )
        );
        assert_eq!(
            err(&sel("{key: a, operator: NotIn}")),
            format!("cgu.yaml doc 1: {field}.values: must not be empty for operator NotIn")
        );
        assert_eq!(
            err(&sel("{key: a, operator: Exists, values: [x]}")),
            format!("cgu.yaml doc 1: {field}.values: must be empty for operator Exists")
        );
        assert!(load_yaml_str("cgu.yaml", &sel("{key: a, operator: DoesNotExist}")).is_ok());
    }

    #[test]
    fn negative_max_concurrency_is_refused() {
        let text = CGU.replace("maxConcurrency: 1", "maxConcurrency: -1");
        assert_eq!(
            err(&text),
            "cgu.yaml doc 1: spec.remediationStrategy.maxConcurrency: must be 0 (one batch with every cluster) or more, not -1"
        );
        assert!(
            load_yaml_str(
                "cgu.yaml",
                &CGU.replace("maxConcurrency: 1", "maxConcurrency: 0")
            )
            .is_ok()
        );
    }

    #[test]
    fn bad_maintenance_windows_are_refused() {
        let with = |w: &str| format!("{CGU}  maintenanceWindows: {w}\n");
        assert_eq!(
            err(&with(
                "[{start: \"02:00\", duration: 4h, timeZone: Mars/Olympus}]"
            )),
            "cgu.yaml doc 1: spec.maintenanceWindows[0].timeZone: unknown time zone \"Mars/Olympus\": use an IANA name such as Europe/Berlin, America/New_York or UTC"
        );
        assert_eq!(
            err(&with("[]")),
            "cgu.yaml doc 1: spec.maintenanceWindows: must list at least one window (remove the field to start batches at any time)"
        );
        assert!(
            load_yaml_str(
                "cgu.yaml",
                &with("[{days: [Sat], start: \"22:00\", duration: 4h, timeZone: Europe/Berlin}]")
            )
            .is_ok()
        );
    }

    #[test]
    fn managed_policies_listed_twice_are_refused() {
        let text = CGU.replace(
            "  clusters: [spoke1]\n",
            "  clusters: [spoke1]\n  managedPolicies: [p1, p2, p1]\n",
        );
        assert_eq!(
            err(&text),
            "cgu.yaml doc 1: spec.managedPolicies[2]: \"p1\" is listed more than once"
        );
    }

    #[test]
    fn object_names_are_checked_as_the_api_server_does() {
        let policy = "apiVersion: policy.open-cluster-management.io/v1\nkind: Policy\nmetadata:\n  name: Bad_Name\n  namespace: default\nspec: {remediationAction: inform, policy-templates: []}\n";
        assert_eq!(
            err(policy),
            "cgu.yaml doc 1: metadata.name: \"Bad_Name\" is not a valid name: a lower-case DNS-1123 subdomain (a-z, 0-9, '-' and '.', starting and ending with a letter or digit, at most 253 characters)"
        );
        let long = format!("{}\n", "a".repeat(254));
        assert!(err(&CGU.replace("cgu-1\n", &long)).contains("at most 253 characters"));
        // Names of up to 253 characters are fine, dots or not (talm's Placement names are
        // often over 63).
        let placementish = format!("{}\n", "a-b".repeat(84));
        assert!(load_yaml_str("cgu.yaml", &CGU.replace("cgu-1\n", &placementish)).is_ok());
        let ns = CGU.replace("name: cgu-1\n", "name: cgu-1\n  namespace: Not.A.Label\n");
        assert_eq!(
            err(&ns),
            "cgu.yaml doc 1: metadata.namespace: \"Not.A.Label\" is not a valid namespace: a lower-case DNS-1123 label (a-z, 0-9 and '-', starting and ending with a letter or digit, at most 63 characters)"
        );
        // Kinds the engine does not read are carried through unchecked.
        let role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: \"system:x\"}\n";
        assert!(load_yaml_str("in.yaml", role).is_ok());
    }
}
