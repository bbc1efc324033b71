//! The OpenShift update graph (Cincinnati) lookup, behind a trait so the engine stays pure.

/// Resolves a release version to its payload image through an update graph.
///
/// Implementations do I/O (HTTP `GET <upstream>?channel=<channel>`) or read a file; the engine
/// only calls them during validation, and only when a ClusterVersion policy names a version
/// without `desiredUpdate.image`.
pub trait UpdateGraph {
    /// Returns the payload image for `version`, or TALM's error message on failure, e.g.
    /// `unable to find version 4.9.8 on update graph on url <u>?channel=<c>`.
    fn payload_for(&self, upstream: &str, channel: &str, version: &str) -> Result<String, String>;
}

/// An update graph that cannot be reached: every lookup fails with TALM's request error.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoUpdateGraph;

impl UpdateGraph for NoUpdateGraph {
    fn payload_for(&self, upstream: &str, channel: &str, _version: &str) -> Result<String, String> {
        Err(format!(
            "unable to request update graph on url {upstream}?channel={channel}: no update graph available"
        ))
    }
}

/// Finds `version` in a Cincinnati graph document (`{"nodes":[{"version","payload"}]}`).
pub fn payload_in_graph(
    graph: &serde_json::Value,
    upstream: &str,
    channel: &str,
    version: &str,
) -> Result<String, String> {
    graph
        .get("nodes")
        .and_then(|n| n.as_array())
        .into_iter()
        .flatten()
        .find(|n| n.get("version").and_then(|v| v.as_str()) == Some(version))
        .and_then(|n| n.get("payload").and_then(|p| p.as_str()))
        .map(str::to_string)
        .ok_or_else(|| {
            format!("unable to find version {version} on update graph on url {upstream}?channel={channel}")
        })
}
