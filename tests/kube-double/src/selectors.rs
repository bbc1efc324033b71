//! Label selectors (equality- and set-based) and field selectors (`metadata.name`,
//! `metadata.namespace`), parsed from query strings and matched against JSON objects.

use serde_json::Value;

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector(Vec<LabelReq>);

fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_err(sel: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: found '{sel}', {why}"))
}

fn parse_set(key: &str, rest: &str, term: &str) -> Result<(String, Vec<String>), ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| parse_err(term, "expected '(' values ')'"))?;
    let mut values = Vec::new();
    for v in inner.split(',') {
        let v = v.trim();
        if !valid_value(v) {
            return Err(parse_err(term, "invalid label value"));
        }
        values.push(v.to_string());
    }
    Ok((key.to_string(), values))
}

impl LabelSelector {
    /// Parses the `labelSelector` query syntax (`a=b,c!=d,e in (x,y),f notin (z),g,!h,n>3`).
    pub(crate) fn parse(sel: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if sel.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for term in split_top_level(sel) {
            let t = term.trim();
            if t.is_empty() {
                return Err(parse_err(sel, "empty requirement"));
            }
            if let Some(key) = t.strip_prefix('!') {
                let key = key.trim();
                if !valid_key(key) {
                    return Err(parse_err(t, "invalid label key"));
                }
                reqs.push(LabelReq::NotExists(key.to_string()));
                continue;
            }
            // Set-based: `key in (..)` / `key notin (..)`.
            let key_end = t
                .find(|c: char| c.is_whitespace() || matches!(c, '=' | '!' | '<' | '>' | '('))
                .unwrap_or(t.len());
            let key = &t[..key_end];
            if !valid_key(key) {
                return Err(parse_err(t, "invalid label key"));
            }
            let rest = t[key_end..].trim_start();
            if rest.is_empty() {
                reqs.push(LabelReq::Exists(key.to_string()));
            } else if let Some(r) = rest.strip_prefix("notin") {
                let (k, v) = parse_set(key, r, t)?;
                reqs.push(LabelReq::NotIn(k, v));
            } else if let Some(r) = rest.strip_prefix("in") {
                let (k, v) = parse_set(key, r, t)?;
                reqs.push(LabelReq::In(k, v));
            } else {
                let (op, value) = if let Some(v) = rest.strip_prefix("==") {
                    ("=", v)
                } else if let Some(v) = rest.strip_prefix("!=") {
                    ("!=", v)
                } else if let Some(v) = rest.strip_prefix('=') {
                    ("=", v)
                } else if let Some(v) = rest.strip_prefix('>') {
                    (">", v)
                } else if let Some(v) = rest.strip_prefix('<') {
                    ("<", v)
                } else {
                    return Err(parse_err(
                        t,
                        "expected one of ['=', '==', '!=', 'in', 'notin', '<', '>']",
                    ));
                };
                let value = value.trim();
                match op {
                    ">" | "<" => {
                        let n: i64 = value.parse().map_err(|_| {
                            parse_err(t, "for 'Gt', 'Lt' operators, the value must be an integer")
                        })?;
                        reqs.push(if op == ">" {
                            LabelReq::Gt(key.to_string(), n)
                        } else {
                            LabelReq::Lt(key.to_string(), n)
                        });
                    }
                    _ => {
                        if !valid_value(value) {
                            return Err(parse_err(t, "invalid label value"));
                        }
                        reqs.push(if op == "=" {
                            LabelReq::Eq(key.to_string(), value.to_string())
                        } else {
                            LabelReq::NotEq(key.to_string(), value.to_string())
                        });
                    }
                }
            }
        }
        Ok(Self(reqs))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `obj`'s `metadata.labels` satisfy every requirement.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            LabelReq::Gt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            LabelReq::Lt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum FieldReq {
    Eq(&'static str, String),
    NotEq(&'static str, String),
}

/// A parsed field selector over `metadata.name` / `metadata.namespace`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSelector(Vec<FieldReq>);

impl FieldSelector {
    /// Parses `metadata.name=x,metadata.namespace!=y` (also `==`). Other fields → 400.
    pub(crate) fn parse(sel: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if sel.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for term in sel.split(',') {
            let t = term.trim();
            let (field, neg, value) = if let Some((f, v)) = t.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = t.split_once("==") {
                (f, false, v)
            } else if let Some((f, v)) = t.split_once('=') {
                (f, false, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: '{t}': expected an operator"
                )));
            };
            let path = match field.trim() {
                "metadata.name" => "/metadata/name",
                "metadata.namespace" => "/metadata/namespace",
                other => {
                    return Err(ApiError::bad_request(format!(
                        "field label not supported: {other}"
                    )));
                }
            };
            let value = value.trim().to_string();
            reqs.push(if neg {
                FieldReq::NotEq(path, value)
            } else {
                FieldReq::Eq(path, value)
            });
        }
        Ok(Self(reqs))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `obj` satisfies every requirement.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|r| {
            let (path, want, neg) = match r {
                FieldReq::Eq(p, v) => (p, v, false),
                FieldReq::NotEq(p, v) => (p, v, true),
            };
            let got = obj.pointer(path).and_then(Value::as_str).unwrap_or("");
            (got == want) != neg
        })
    }
}

/// Label and field selector together.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
}

impl Filter {
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        (self.labels.is_empty() || self.labels.matches(obj))
            && (self.fields.is_empty() || self.fields.matches(obj))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn set_based_and_equality() {
        let o = obj(json!({"env": "prod", "tier": "web", "n": "5"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m("env=prod"));
        assert!(m("env==prod,tier"));
        assert!(m("env in (prod, dev)"));
        assert!(!m("env notin (prod)"));
        assert!(m("missing notin (x)"));
        assert!(m("!missing"));
        assert!(!m("!env"));
        assert!(m("env!=dev"));
        assert!(m("n>3,n<6"));
        assert!(!m("env in (dev),tier"));
        assert!(LabelSelector::parse("env in prod").is_err());
        assert!(LabelSelector::parse("a=b,,c").is_err());
    }

    #[test]
    fn fields() {
        let o = obj(json!({}));
        assert!(FieldSelector::parse("metadata.name=a").unwrap().matches(&o));
        assert!(
            FieldSelector::parse("metadata.namespace!=x")
                .unwrap()
                .matches(&o)
        );
        assert!(
            !FieldSelector::parse("metadata.name==b")
                .unwrap()
                .matches(&o)
        );
        assert_eq!(FieldSelector::parse("spec.x=1").unwrap_err().code, 400);
    }
}
