//! The YAML parser settings both binaries use for large inputs (`talm-hub plan`'s files and
//! update graphs, the agent's operator catalogs).

/// serde-saphyr options for large inputs: no source snippets in errors (messages stay one
/// line), and size budgets raised far above serde-saphyr's defaults (1,024 documents, 250,000
/// nodes), which a fleet's worth of objects or a public operator catalog exceeds. Alias and
/// anchor limits keep their defaults, which guard against alias bombs.
pub fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_documents: 10_000_000,
            max_nodes: 500_000_000,
            max_events: 1_000_000_000,
            max_total_scalar_bytes: 4 * 1024 * 1024 * 1024,
            max_depth: 256,
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    #[test]
    fn budgets_allow_more_documents_than_the_defaults() {
        let text = "a: 1\n---\n".repeat(2_000);
        let docs: Vec<Value> =
            serde_saphyr::from_multiple_with_options(&text, super::options()).unwrap();
        assert_eq!(docs.len(), 2_000);
        assert!(
            serde_saphyr::from_multiple::<Value>(&text).is_err(),
            "the defaults would refuse this input"
        );
    }

    #[test]
    fn errors_are_one_line() {
        let err = serde_saphyr::from_multiple_with_options::<Value>("a: [1,\n", super::options())
            .unwrap_err()
            .to_string();
        assert!(!err.trim().contains('\n'), "{err}");
        // The defaults quote the source around the error over several lines.
        let default = serde_saphyr::from_multiple::<Value>("a: [1,\n")
            .unwrap_err()
            .to_string();
        assert!(default.trim().contains('\n'), "{default}");
    }
}
