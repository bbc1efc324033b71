//! Reading `plan` input: files, directories and stdin holding multi-document YAML, JSON, or
//! `kind: List` documents (what `oc get -o yaml` writes), turned into [`Loaded`] objects.
//!
//! Each object stays a raw JSON value (so fields talm does not model survive to the output);
//! objects of the kinds the engine reads are also parsed into their typed views here, so bad
//! input fails before the engine runs, with one line naming file, document and field path.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::store::{Kind, Typed};

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
/// `*.yaml`, `*.yml` and `*.json` files sorted by name (not recursive).
pub fn load_paths(paths: &[PathBuf], stdin: &mut dyn Read) -> Result<Vec<Loaded>, InputError> {
    let mut out = Vec::new();
    let mut stdin_read = false;
    for path in paths {
        if path.as_os_str() == "-" {
            if stdin_read {
                return Err(InputError::StdinTwice);
            }
            stdin_read = true;
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(|source| InputError::Read {
                    path: "<stdin>".into(),
                    source,
                })?;
            out.extend(load_text("<stdin>", &text, sniff(None, &text))?);
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
                out.extend(load_file(&file)?);
            }
        } else {
            out.extend(load_file(path)?);
        }
    }
    Ok(out)
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

fn load_file(path: &Path) -> Result<Vec<Loaded>, InputError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| InputError::Read {
        path: shown.clone(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| InputError::Syntax {
        path: shown.clone(),
        message: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    load_text(&shown, &text, sniff(ext.as_deref(), &text))
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

/// Parses the objects of YAML text as if read from a file called `file` (tests, tools).
pub fn load_yaml_str(file: &str, text: &str) -> Result<Vec<Loaded>, InputError> {
    load_text(file, text, Syntax::Yaml)
}

/// Parses every object of one file's text. `file` is how the file is named in messages.
fn load_text(file: &str, text: &str, syntax: Syntax) -> Result<Vec<Loaded>, InputError> {
    let docs = parse_documents(file, text, syntax)?;
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

fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_documents(file: &str, text: &str, syntax: Syntax) -> Result<Vec<Value>, InputError> {
    let syntax_error = |message: String| InputError::Syntax {
        path: file.into(),
        message: one_line(&message),
    };
    match syntax {
        Syntax::Json => serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| syntax_error(format!("invalid JSON: {e}"))),
        Syntax::Yaml => {
            serde_saphyr::from_multiple_with_options::<Value>(text, talm_shared::yaml::options())
                .map_err(|e| syntax_error(format!("invalid YAML: {e}")))
        }
    }
}

/// A document: one object, or a `kind: List` of objects.
fn load_document(origin: Origin, doc: Value, out: &mut Vec<Loaded>) -> Result<(), InputError> {
    let Value::Object(map) = doc else {
        return Err(origin.at(
            "",
            format!(
                "expected a mapping (a Kubernetes object), found {}",
                type_name(&doc)
            ),
        ));
    };
    if map.get("kind").and_then(Value::as_str) == Some("List") {
        let items = match map.get("items") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Array(items)) => items.clone(),
            Some(other) => {
                return Err(origin.at(
                    "items",
                    format!("expected a sequence, found {}", type_name(other)),
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
}
