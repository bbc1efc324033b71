//! `--update-graph FILE`: answers the engine's Cincinnati update-graph lookups from a file
//! instead of HTTP. The file maps `"<upstream>?channel=<channel>"` to a graph document
//! (`{nodes: [{version, payload}]}`), in YAML or JSON, read with the same limits as the objects
//! (size, alias expansion, duplicate keys).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::Value;
use talm_hub_core::UpdateGraph;
use talm_hub_core::graph::payload_in_graph;

use talm_shared::yaml::DocError;

use super::load::{InputError, MAX_INPUT_BYTES};

/// Update graphs read from a file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileUpdateGraph {
    graphs: BTreeMap<String, Value>,
}

impl FileUpdateGraph {
    /// Builds a lookup from a URL → graph mapping.
    pub fn new(graphs: BTreeMap<String, Value>) -> Self {
        Self { graphs }
    }

    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<Self, InputError> {
        let shown = path.display().to_string();
        let bad = |message: String| InputError::UpdateGraph {
            path: shown.clone(),
            message,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_INPUT_BYTES + 1).read_to_string(&mut text))
            .map_err(|e| bad(e.to_string()))?;
        if text.len() as u64 > MAX_INPUT_BYTES {
            return Err(bad("larger than 256 MiB".into()));
        }
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let doc: Value = if is_json {
            let mut values = talm_shared::yaml::json_values(&text, usize::MAX)
                .map_err(|e| bad(format!("invalid JSON: {e}")))?;
            match (values.pop(), values.is_empty()) {
                (Some(v), true) => v,
                _ => return Err(bad("invalid JSON: expected exactly one value".into())),
            }
        } else {
            talm_shared::yaml::from_str_value(&text).map_err(|e| match e {
                DocError::Syntax(m) => bad(format!("invalid YAML: {m}")),
                other => bad(other.to_string()),
            })?
        };
        let Value::Object(map) = doc else {
            return Err(bad(
                "expected a mapping of \"<upstream>?channel=<channel>\" to graphs".into(),
            ));
        };
        for (url, graph) in &map {
            if !url.contains("?channel=") {
                return Err(bad(format!(
                    "{url}: key must be \"<upstream>?channel=<channel>\""
                )));
            }
            match graph.get("nodes") {
                Some(Value::Array(_)) => {}
                _ => return Err(bad(format!("{url}: expected a graph with a `nodes` list"))),
            }
        }
        Ok(Self::new(map.into_iter().collect()))
    }
}

impl UpdateGraph for FileUpdateGraph {
    fn payload_for(&self, upstream: &str, channel: &str, version: &str) -> Result<String, String> {
        let url = format!("{upstream}?channel={channel}");
        match self.graphs.get(&url) {
            Some(graph) => payload_in_graph(graph, upstream, channel, version),
            None => Err(format!(
                "unable to request update graph on url {url}: not in --update-graph file"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn graph() -> FileUpdateGraph {
        FileUpdateGraph::new(BTreeMap::from([(
            "https://api.openshift.com/api/upgrades_info/v1/graph?channel=stable-4.16".to_string(),
            json!({"nodes": [
                {"version": "4.16.3", "payload": "quay.io/openshift-release-dev/ocp-release@sha256:aaa"},
                {"version": "4.16.4", "payload": "quay.io/openshift-release-dev/ocp-release@sha256:bbb"},
            ]}),
        )]))
    }

    const UPSTREAM: &str = "https://api.openshift.com/api/upgrades_info/v1/graph";

    #[test]
    fn finds_the_payload_of_a_version() {
        assert_eq!(
            graph()
                .payload_for(UPSTREAM, "stable-4.16", "4.16.4")
                .unwrap(),
            "quay.io/openshift-release-dev/ocp-release@sha256:bbb"
        );
    }

    #[test]
    fn unknown_version_uses_talms_message() {
        assert_eq!(
            graph()
                .payload_for(UPSTREAM, "stable-4.16", "4.16.9")
                .unwrap_err(),
            format!(
                "unable to find version 4.16.9 on update graph on url {UPSTREAM}?channel=stable-4.16"
            )
        );
    }

    #[test]
    fn unknown_url_is_a_request_error() {
        assert_eq!(
            graph()
                .payload_for(UPSTREAM, "fast-4.16", "4.16.4")
                .unwrap_err(),
            format!(
                "unable to request update graph on url {UPSTREAM}?channel=fast-4.16: not in --update-graph file"
            )
        );
    }

    fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("talm-hub-graph-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn loads_yaml_and_json_files() {
        let yaml = write_temp(
            "g.yaml",
            "\"http://u/graph?channel=c\":\n  nodes:\n  - {version: \"4.1.0\", payload: img}\n",
        );
        let g = FileUpdateGraph::load(&yaml).unwrap();
        assert_eq!(
            g.payload_for("http://u/graph", "c", "4.1.0").unwrap(),
            "img"
        );
        let json = write_temp("g.json", r#"{"http://u/graph?channel=c": {"nodes": []}}"#);
        let g = FileUpdateGraph::load(&json).unwrap();
        assert!(g.payload_for("http://u/graph", "c", "4.1.0").is_err());
        std::fs::remove_file(yaml).unwrap();
        std::fs::remove_file(json).unwrap();
    }

    #[test]
    fn rejects_badly_shaped_files() {
        for (name, text, needle) in [
            ("list.yaml", "- a\n", "expected a mapping"),
            ("key.yaml", "http://u: {nodes: []}\n", "key must be"),
            ("nodes.yaml", "\"http://u?channel=c\": {}\n", "`nodes` list"),
            ("syntax.json", "{", "invalid JSON"),
        ] {
            let path = write_temp(name, text);
            let err = FileUpdateGraph::load(&path).unwrap_err().to_string();
            assert!(err.starts_with("--update-graph "), "{err}");
            assert!(err.contains(needle), "{name}: {err}");
            std::fs::remove_file(path).unwrap();
        }
        let missing = FileUpdateGraph::load(Path::new("/nonexistent/graph.yaml")).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/graph.yaml"));
    }

    /// Issue 14 items 5 and 10: the graph file is read with the same budget and key checks as
    /// the objects.
    #[test]
    fn alias_bombs_and_duplicate_keys_are_refused() {
        // 99 aliases: one fewer than serde-saphyr's alias/anchor ratio check looks at.
        let big = "x".repeat(256 * 1024);
        let mut bomb = format!("\"http://u?channel=c\":\n  nodes: []\n  a: &s {big}\n  b:\n");
        for _ in 0..99 {
            bomb.push_str("  - *s\n");
        }
        let json_dup =
            r#"{"http://u?channel=c": {"nodes": []}, "http://u?channel=c": {"nodes": []}}"#;
        for (name, text, needle) in [
            (
                "bomb.yaml",
                bomb.as_str(),
                "aliases expand the document beyond",
            ),
            ("dup.json", json_dup, "duplicate key `http://u?channel=c`"),
        ] {
            let path = write_temp(name, text);
            let err = FileUpdateGraph::load(&path)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{name}: {err}");
            std::fs::remove_file(path).unwrap();
        }
    }
}
