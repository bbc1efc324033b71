//! Reading YAML (and JSON) documents from untrusted files with bounded memory: `talm-hub plan`'s
//! inputs and update graphs, the agent's operator catalogs and pre-cache specs, and the
//! object templates embedded in policies.
//!
//! serde-saphyr's own budgets count the parser's events, so an alias counts once however large
//! the anchored node is: a few kilobytes of nested aliases expand to gigabytes. Every reader
//! here builds a `serde_json::Value` through a visitor that charges each node and each string
//! byte *as built*, aliases included, against a budget of [`EXPANSION_FACTOR`] times the text's
//! size (at least [`EXPANSION_FLOOR`]). Without aliases a document never reaches twice its text
//! size, so only alias amplification trips it. The same visitor refuses duplicate mapping keys
//! (YAML and JSON alike) and can stop once a number of objects (documents and the items of
//! `kind: List` documents) is exceeded, before the rest of the input is built.

use std::cell::Cell;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The expanded size (string bytes plus one per node) may be this many times the text's size.
pub const EXPANSION_FACTOR: usize = 4;

/// The expanded size allowed whatever the text's size (small files may use anchors freely).
pub const EXPANSION_FLOOR: usize = 1024 * 1024;

/// serde-saphyr options for large inputs: no source snippets in errors (messages stay one
/// line), and size budgets raised far above serde-saphyr's defaults (1,024 documents, 250,000
/// nodes), which a fleet's worth of objects or a public operator catalog exceeds. The scalar
/// budget counts the text as written (aliases once); the readers of this module bound the
/// expanded size. Duplicate keys pass the parser (last wins) because the readers refuse them
/// with a shorter message (`duplicate key `c` at line 3, column 3`): use these options only
/// through the readers. Alias and anchor limits keep their defaults.
pub fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        with_snippet: false,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::LastWins,
        budget: serde_saphyr::budget! {
            max_documents: 10_000_000,
            max_nodes: 500_000_000,
            max_events: 1_000_000_000,
            max_total_scalar_bytes: 1024 * 1024 * 1024,
            max_depth: 256,
        },
    }
}

/// Why a text could not be read. Every variant renders as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    /// Not valid YAML/JSON, a duplicate key, or a type the caller's shape refuses: the
    /// parser's message (with line and column when known).
    #[error("{0}")]
    Syntax(String),
    /// Aliases expand the text beyond the budget.
    #[error(
        "aliases expand the document beyond {limit} bytes ({EXPANSION_FACTOR} times the input's \
         size, at least 1 MiB); refusing it (an alias bomb?)"
    )]
    Expansion {
        /// The budget that was exceeded, in bytes.
        limit: usize,
    },
    /// More objects than the caller allows.
    #[error("more than {limit} objects")]
    TooManyObjects {
        /// The most objects allowed.
        limit: usize,
    },
}

/// The expansion budget for a text of `len` bytes.
pub fn expansion_limit(len: usize) -> usize {
    len.saturating_mul(EXPANSION_FACTOR).max(EXPANSION_FLOOR)
}

/// Every non-null document of a YAML stream, each as a JSON value (aliases expanded within the
/// budget, duplicate keys refused).
pub fn from_multiple(text: &str) -> Result<Vec<Value>, DocError> {
    from_multiple_counted(text, usize::MAX)
}

/// [`from_multiple`], refusing the text as soon as it holds more than `max_objects` objects: a
/// document is one object, except that a document whose top-level `items` is a sequence (a
/// `kind: List`) counts the mappings in it instead.
pub fn from_multiple_counted(text: &str, max_objects: usize) -> Result<Vec<Value>, DocError> {
    let scope = Scope::enter(expansion_limit(text.len()), max_objects);
    let docs = serde_saphyr::from_multiple_with_options::<Checked>(text, options());
    match (scope.finish(), docs) {
        (Some(trip), _) => Err(trip),
        (None, Ok(docs)) => Ok(docs.into_iter().map(|Checked(v)| v).collect()),
        (None, Err(e)) => Err(DocError::Syntax(one_line(&e.to_string()))),
    }
}

/// One YAML document as a JSON value (aliases expanded within the budget, duplicate keys
/// refused); an empty document is `null`.
pub fn from_str_value(text: &str) -> Result<Value, DocError> {
    let scope = Scope::enter(expansion_limit(text.len()), usize::MAX);
    let doc = serde_saphyr::from_str_with_options::<Checked>(text, options());
    match (scope.finish(), doc) {
        (Some(trip), _) => Err(trip),
        (None, Ok(Checked(v))) => Ok(v),
        (None, Err(e)) => Err(DocError::Syntax(one_line(&e.to_string()))),
    }
}

/// One YAML document into `T`. The text is first built as a value under the budget (and
/// dropped), then parsed into `T`, so `T` sees YAML's typing (`y` stays a string for a string
/// field) and messages keep their line numbers. Meant for small files such as specs.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, DocError> {
    from_str_value(text)?;
    serde_saphyr::from_str_with_options(text, options())
        .map_err(|e| DocError::Syntax(one_line(&e.to_string())))
}

/// Every value of a JSON text (one value or several, whitespace-separated), duplicate keys
/// refused, refusing more than `max_objects` objects as [`from_multiple_counted`] counts them.
pub fn json_values(text: &str, max_objects: usize) -> Result<Vec<Value>, DocError> {
    let scope = Scope::enter(usize::MAX, max_objects);
    let values = serde_json::Deserializer::from_str(text)
        .into_iter::<Checked>()
        .map(|r| r.map(|Checked(v)| v))
        .collect::<Result<Vec<_>, _>>();
    match (scope.finish(), values) {
        (Some(trip), _) => Err(trip),
        (None, Ok(values)) => Ok(values),
        (None, Err(e)) => Err(DocError::Syntax(e.to_string())),
    }
}

/// Joins a multi-line message into one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The budget of the parse running on this thread.
#[derive(Clone, Copy, Debug)]
struct Budget {
    /// Expansion units left (string bytes plus one per node).
    left: usize,
    /// The expansion budget, for the message.
    limit: usize,
    /// Objects still allowed.
    objects_left: usize,
    /// The object limit, for the message.
    objects: usize,
    /// Nesting depth of the node being built (0 = a document's root).
    depth: usize,
    /// True while the value of a root mapping's `items` key is being built.
    in_items: bool,
    /// Set when a limit tripped.
    tripped: Option<Trip>,
}

#[derive(Clone, Copy, Debug)]
enum Trip {
    Expansion,
    Objects,
}

thread_local! {
    /// `None` outside [`Scope`]: the visitor then builds values without limits.
    static BUDGET: Cell<Option<Budget>> = const { Cell::new(None) };
}

/// Installs a budget for one parse on this thread; restores the previous one when dropped.
struct Scope {
    previous: Option<Budget>,
}

impl Scope {
    fn enter(limit: usize, objects: usize) -> Self {
        let budget = Budget {
            left: limit,
            limit,
            objects_left: objects,
            objects,
            depth: 0,
            in_items: false,
            tripped: None,
        };
        Self {
            previous: BUDGET.with(|b| b.replace(Some(budget))),
        }
    }

    /// The limit that stopped the parse, if one did.
    fn finish(self) -> Option<DocError> {
        let budget = BUDGET.with(Cell::get)?;
        budget.tripped.map(|trip| match trip {
            Trip::Expansion => DocError::Expansion {
                limit: budget.limit,
            },
            Trip::Objects => DocError::TooManyObjects {
                limit: budget.objects,
            },
        })
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        BUDGET.with(|b| b.set(self.previous));
    }
}

/// Applies `f` to this thread's budget, if a parse installed one.
fn with_budget<R>(f: impl FnOnce(&mut Budget) -> R) -> Option<R> {
    BUDGET.with(|cell| {
        let mut budget = cell.get()?;
        let out = f(&mut budget);
        cell.set(Some(budget));
        Some(out)
    })
}

/// Charges `units` against the expansion budget.
fn charge<E: de::Error>(units: usize) -> Result<(), E> {
    let ok = with_budget(|b| {
        if b.tripped.is_some() {
            return false;
        }
        match b.left.checked_sub(units) {
            Some(left) => {
                b.left = left;
                true
            }
            None => {
                b.tripped = Some(Trip::Expansion);
                false
            }
        }
    });
    match ok {
        Some(false) => Err(E::custom("expansion budget exceeded")),
        _ => Ok(()),
    }
}

/// Counts one object against the object limit.
fn count_object<E: de::Error>() -> Result<(), E> {
    let ok = with_budget(|b| {
        if b.tripped.is_some() {
            return false;
        }
        match b.objects_left.checked_sub(1) {
            Some(left) => {
                b.objects_left = left;
                true
            }
            None => {
                b.tripped = Some(Trip::Objects);
                false
            }
        }
    });
    match ok {
        Some(false) => Err(E::custom("object limit exceeded")),
        _ => Ok(()),
    }
}

fn descend() {
    with_budget(|b| b.depth += 1);
}

fn ascend() {
    with_budget(|b| b.depth = b.depth.saturating_sub(1));
}

/// A JSON value built under this thread's budget.
struct Checked(Value);

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor).map(Checked)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML or JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        charge(1)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        charge(1)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        charge(1)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        charge(1)?;
        Number::deserialize(de::value::I128Deserializer::new(v)).map(Value::Number)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        charge(1)?;
        Number::deserialize(de::value::U128Deserializer::new(v)).map(Value::Number)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        charge(1)?;
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        charge(v.len().saturating_add(1))?;
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        charge(v.len().saturating_add(1))?;
        Ok(Value::String(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        charge(1)?;
        Ok(Value::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        charge(1)?;
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Checked::deserialize(deserializer).map(|Checked(v)| v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        charge(1)?;
        descend();
        let mut out = Vec::new();
        let result = loop {
            match seq.next_element::<Checked>() {
                Ok(Some(Checked(v))) => out.push(v),
                Ok(None) => break Ok(Value::Array(out)),
                Err(e) => break Err(e),
            }
        };
        ascend();
        result
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        charge(1)?;
        let (depth, in_items) = with_budget(|b| {
            b.depth += 1;
            (b.depth - 1, b.in_items)
        })
        .unwrap_or((1, false));
        let result = build_object(&mut map, depth, in_items);
        ascend();
        result.map(Value::Object)
    }
}

/// A mapping at `depth`. A document's root counts as an object once built, unless its `items`
/// is a sequence (a List): the mappings in that sequence count instead, as they start.
fn build_object<'de, A: MapAccess<'de>>(
    map: &mut A,
    depth: usize,
    in_items: bool,
) -> Result<Map<String, Value>, A::Error> {
    if depth == 2 && in_items {
        count_object()?;
    }
    let out = build_map(map, depth == 0)?;
    if depth == 0 && !matches!(out.get("items"), Some(Value::Array(_))) {
        count_object()?;
    }
    Ok(out)
}

/// The entries of a mapping; duplicate keys are refused, naming the key.
fn build_map<'de, A: MapAccess<'de>>(
    map: &mut A,
    root: bool,
) -> Result<Map<String, Value>, A::Error> {
    let mut out = Map::new();
    while let Some(key) = map.next_key::<String>()? {
        charge(key.len().saturating_add(1))?;
        if out.contains_key(&key) {
            return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
        }
        let items = root && key == "items";
        if items {
            with_budget(|b| b.in_items = true);
        }
        let value = map.next_value::<Checked>();
        if items {
            with_budget(|b| b.in_items = false);
        }
        out.insert(key, value?.0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn budgets_allow_more_documents_than_the_defaults() {
        let text = "a: 1\n---\n".repeat(2_000);
        let docs = from_multiple(&text).unwrap();
        assert_eq!(docs.len(), 2_000);
        assert!(
            serde_saphyr::from_multiple::<Value>(&text).is_err(),
            "the defaults would refuse this input"
        );
    }

    #[test]
    fn errors_are_one_line() {
        let err = from_multiple("a: [1,\n").unwrap_err().to_string();
        assert!(!err.trim().contains('\n'), "{err}");
        assert!(err.contains("line "), "{err}");
        // The defaults quote the source around the error over several lines.
        let default = serde_saphyr::from_multiple::<Value>("a: [1,\n")
            .unwrap_err()
            .to_string();
        assert!(default.trim().contains('\n'), "{default}");
    }

    #[test]
    fn values_match_serde_json_values() {
        let text =
            "a: [1, -2, 3.5, true, null, ~, 'x', 18446744073709551615]\nb: {c: d}\nempty: {}\n";
        let expected: Value = serde_saphyr::from_str(text).unwrap();
        assert_eq!(from_str_value(text).unwrap(), expected);
        assert_eq!(from_multiple(text).unwrap(), vec![expected]);
        assert_eq!(from_str_value("").unwrap(), Value::Null);
    }

    /// A 256 KiB scalar aliased 99 times (serde-saphyr's alias/anchor ratio check starts at
    /// 100 aliases): 25 MiB once expanded, from a 257 KiB text.
    fn wide_bomb() -> String {
        let big = "x".repeat(256 * 1024);
        let mut text = format!("a: &s {big}\nb:\n");
        for _ in 0..99 {
            text.push_str("- *s\n");
        }
        text
    }

    /// Nine levels of nine aliases each: 9^9 copies of a short list.
    fn nested_bomb() -> String {
        let mut text = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "l{i}: &l{i} [*l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}]\n"
            ));
        }
        text
    }

    #[test]
    fn aliases_count_at_their_expanded_size() {
        for text in [wide_bomb(), nested_bomb()] {
            let limit = expansion_limit(text.len());
            assert_eq!(
                from_multiple(&text).unwrap_err(),
                DocError::Expansion { limit },
                "multi-document"
            );
            assert_eq!(
                from_str_value(&text).unwrap_err(),
                DocError::Expansion { limit }
            );
            let msg = DocError::Expansion { limit }.to_string();
            assert!(msg.contains("aliases expand the document beyond"), "{msg}");
        }
        // A modest use of anchors is fine.
        let text = "base: &b {x: 1, y: [a, b]}\none: *b\ntwo: *b\n";
        let v = from_str_value(text).unwrap();
        assert_eq!(v["two"], json!({"x": 1, "y": ["a", "b"]}));
    }

    #[test]
    fn alias_free_text_stays_within_twice_its_size() {
        // The worst cases for the count: one-character scalars, empty collections, implicit
        // nulls, and escapes that decode to more bytes than they take (`\L` is 3 bytes).
        for text in [
            format!("k: [{}]\n", "a, {}, [], '', 1, ".repeat(1_000)),
            "- a\n-\n- {b, c}\n- {a: {}}\n".repeat(1_000),
            "- \"\\L\\L\\L\\L\"\n".repeat(1_000),
        ] {
            let scope = Scope::enter(usize::MAX, usize::MAX);
            let docs = serde_saphyr::from_multiple_with_options::<Checked>(&text, options());
            let used = BUDGET.with(Cell::get).map(|b| usize::MAX - b.left);
            drop(scope);
            assert_eq!(docs.map(|d| d.len()).ok(), Some(1), "{text}");
            let used = used.unwrap();
            assert!(used <= 2 * text.len(), "{used} > 2 × {}", text.len());
        }
    }

    #[test]
    fn duplicate_keys_are_refused_naming_the_key() {
        let e = json_values("{\"a\": 1,\n \"b\": {\"c\": 1, \"c\": 2}}", usize::MAX)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("duplicate key `c`") && e.contains("line 2"),
            "{e}"
        );
        let e = from_multiple("a: 1\nb:\n  c: 1\n  c: 2\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains('c') && e.to_lowercase().contains("duplicate"),
            "{e}"
        );
        assert_eq!(
            json_values("{\"a\": 1} {\"a\": 2}", usize::MAX).unwrap(),
            vec![json!({"a": 1}), json!({"a": 2})]
        );
    }

    #[test]
    fn objects_are_counted_as_they_are_built() {
        let list = "kind: List\nitems:\n- {a: 1, m: {x: 1}}\n- {a: 2}\n- {a: 3}\n";
        // The List's three items (not the List itself).
        assert_eq!(from_multiple_counted(list, 3).unwrap().len(), 1);
        assert_eq!(
            from_multiple_counted(list, 2).unwrap_err(),
            DocError::TooManyObjects { limit: 2 }
        );
        // Nested mappings and `items` below the root are not objects.
        let docs = "a: {b: {c: {}}}\nspec: {items: [{x: 1}, {x: 2}]}\n---\nb: 1\n";
        assert_eq!(from_multiple_counted(docs, 2).unwrap().len(), 2);
        assert_eq!(
            from_multiple_counted(docs, 1).unwrap_err(),
            DocError::TooManyObjects { limit: 1 }
        );
        let json = "{\"kind\": \"List\", \"items\": [{}, {}]} {\"a\": 1}";
        assert_eq!(json_values(json, 3).unwrap().len(), 2);
        assert_eq!(
            json_values(json, 2).unwrap_err(),
            DocError::TooManyObjects { limit: 2 }
        );
    }

    #[test]
    fn typed_reads_go_through_the_budget() {
        #[derive(Debug, serde::Deserialize)]
        struct Shape {
            a: Vec<String>,
        }
        assert_eq!(from_str::<Shape>("a: [x, y]\n").unwrap().a, ["x", "y"]);
        assert!(matches!(
            from_str::<Shape>(&nested_bomb()).unwrap_err(),
            DocError::Expansion { .. }
        ));
    }
}
