//! `--update-graph FILE`: answers the engine's Cincinnati update-graph lookups from a file
//! instead of HTTP. The file maps `"<upstream>?channel=<channel>"` to a graph document
//! (`{nodes: [{version, payload}]}`), in YAML or JSON.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use talm_hub_core::UpdateGraph;
use talm_hub_core::graph::payload_in_graph;

use super::load::InputError;

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
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let doc: Value = if is_json {
            serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?
        } else {
            serde_saphyr::from_str_with_options(&text, talm_shared::yaml::options()).map_err(
                |e| {
                    bad(format!(
                        "invalid YAML: {}",
                        e.to_string().replace('\n', " ")
                    ))
                },
            )?
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
}
