//! Checks the Kubernetes API server (object names) and apimachinery (label selectors) make, so
//! that offline input (`talm-hub plan`) is refused where a real hub would refuse it, with the
//! field named, instead of misbehaving later.

use super::LabelSelector;

/// What a valid object name is, for messages.
pub const DNS1123_SUBDOMAIN: &str = "a lower-case DNS-1123 subdomain (a-z, 0-9, '-' and '.', \
     starting and ending with a letter or digit, at most 253 characters)";

/// What a valid namespace is, for messages.
pub const DNS1123_LABEL: &str = "a lower-case DNS-1123 label (a-z, 0-9 and '-', starting and \
     ending with a letter or digit, at most 63 characters)";

/// True when `s` is a DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 bytes.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

/// True when `s` is a DNS-1123 subdomain, as apimachinery's `IsDNS1123Subdomain` checks it:
/// dot-separated parts of `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 253 bytes in all. Unlike a
/// DNS name, a part may be longer than 63 bytes (`<cgu>-<policy>-placement-<suffix>` often is).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            b.first().is_some_and(alnum)
                && b.last().is_some_and(alnum)
                && b.iter().all(|c| alnum(c) || *c == b'-')
        })
}

/// A selector problem: the field path below the selector and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    /// E.g. `matchExpressions[1].operator`.
    pub path: String,
    /// E.g. `unknown operator "Bogus" (expected In, NotIn, Exists or DoesNotExist)`.
    pub message: String,
}

/// Checks a label selector as apimachinery's `LabelSelectorAsSelector` does: a known operator,
/// values for `In`/`NotIn`, none for `Exists`/`DoesNotExist`. TALM fails its reconcile on
/// such a selector; without the check it would silently match nothing.
pub fn check_label_selector(selector: &LabelSelector) -> Result<(), SelectorError> {
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let has_values = e.values.as_ref().is_some_and(|v| !v.is_empty());
        let problem = match e.operator.as_str() {
            "In" | "NotIn" if !has_values => Some((
                "values",
                format!("must not be empty for operator {}", e.operator),
            )),
            "Exists" | "DoesNotExist" if has_values => Some((
                "values",
                format!("must be empty for operator {}", e.operator),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => None,
            other => Some((
                "operator",
                format!("unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"),
            )),
        };
        if let Some((field, message)) = problem {
            return Err(SelectorError {
                path: format!("matchExpressions[{i}].{field}"),
                message,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LabelSelectorRequirement;

    #[test]
    fn dns1123_names() {
        for ok in ["a", "spoke1", "default.policy-1", "0abc", &"a".repeat(63)] {
            assert!(is_dns1123_subdomain(ok), "{ok}");
        }
        for bad in ["", "Bad", "a_b", "-a", "a-", "a..b", ".a", "a.", "a b", "é"] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
        assert!(!is_dns1123_label(&"a".repeat(64)));
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(long.len(), 253);
        assert!(is_dns1123_subdomain(&long));
        assert!(!is_dns1123_subdomain(&format!("{long}e")));
        // apimachinery has no per-part limit: a 73-character Placement name is valid.
        let placement =
            "cgu-upgrade-complete-policy1-common-cluster-version-policy-placement-kuttl";
        assert!(placement.len() > 63);
        assert!(is_dns1123_subdomain(placement));
        assert!(is_dns1123_subdomain(&"a".repeat(253)));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
        assert!(is_dns1123_label("ztp-site-1"));
        assert!(!is_dns1123_label("a.b"));
    }

    fn selector(operator: &str, values: Option<&[&str]>) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "k".into(),
                    operator: "Exists".into(),
                    values: None,
                },
                LabelSelectorRequirement {
                    key: "k".into(),
                    operator: operator.into(),
                    values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
                },
            ]),
        }
    }

    #[test]
    fn label_selectors() {
        for (op, values) in [
            ("In", Some(&["a"][..])),
            ("NotIn", Some(&["a"][..])),
            ("Exists", None),
            ("DoesNotExist", Some(&[][..])),
        ] {
            assert_eq!(check_label_selector(&selector(op, values)), Ok(()), "{op}");
        }
        let err = |op, values| check_label_selector(&selector(op, values)).unwrap_err();
        assert_eq!(
            err("Bogus", Some(&["a"][..])),
            SelectorError {
                path: "matchExpressions[1].operator".into(),
                message: "unknown operator \"Bogus\" (expected In, NotIn, Exists or DoesNotExist)"
                    .into(),
            }
        );
        // Operators are case-sensitive, as in apimachinery.
        assert_eq!(
            err("in", Some(&["a"][..])).path,
            "matchExpressions[1].operator"
        );
        assert_eq!(
            err("In", Some(&[][..])).message,
            "must not be empty for operator In"
        );
        assert_eq!(
            err("DoesNotExist", Some(&["a"][..])).message,
            "must be empty for operator DoesNotExist"
        );
        assert_eq!(check_label_selector(&LabelSelector::default()), Ok(()));
    }
}
