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
            let options = serde_saphyr::options! { with_snippet: false };
            serde_saphyr::from_multiple_with_options::<Value>(text, options)
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
