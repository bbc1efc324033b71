//! `excludePrecachePatterns`, with TALM's semantics. TALM's `release.sh` strips blank lines and
//! surrounding whitespace from the patterns and runs `grep -vG -f patterns`: every pattern is a
//! POSIX *basic* regular expression (GNU flavour), case-sensitive, matched anywhere in the text.
//! This module translates each BRE into the `regex` crate's syntax so that a pattern means the
//! same thing here as on a TALM spoke:
//!
//! - `.`, `*`, `[...]` (with `[:class:]`), `^` at the start and `$` at the end are special;
//! - `\(`…`\)`, `\{m,n\}`, `\|`, `\+`, `\?` are the GNU groups, intervals and operators, while
//!   plain `(`, `)`, `{`, `}`, `|`, `+`, `?` are literal characters (so `aws|azure` matches the
//!   literal text `aws|azure`, as in TALM; write `aws\|azure` for either);
//! - `*` at the start of a pattern or group is literal; `\<`, `\>`, `\b`, `\B`, `\w`, `\W`,
//!   `\s`, `\S` are word operators as in GNU grep;
//! - back-references (`\1`…`\9`) and collating elements (`[.x.]`, `[=x=]`) are rejected with an
//!   error naming the pattern (the `regex` crate cannot express back-references).
//!
//! A pattern with an embedded newline is several patterns, as it is once TALM writes the list
//! to a file.

use regex::Regex;

use super::SourceError;

/// Compiled exclude patterns. An empty set excludes nothing.
#[derive(Clone, Debug, Default)]
pub struct ExcludePatterns {
    patterns: Vec<(String, Regex)>,
}

impl ExcludePatterns {
    /// Compiles the patterns (blank ones are skipped, each is trimmed); an invalid one is an
    /// error naming it.
    pub fn new(patterns: &[String]) -> Result<Self, SourceError> {
        let mut compiled = Vec::new();
        for pattern in patterns.iter().flat_map(|p| p.split('\n')) {
            let pattern = pattern.trim();
            if pattern.is_empty() {
                continue;
            }
            let invalid = |reason: String| SourceError::InvalidPattern {
                pattern: pattern.to_string(),
                reason,
            };
            let translated = bre_to_regex(pattern).map_err(invalid)?;
            let regex = Regex::new(&translated).map_err(|e| invalid(e.to_string()))?;
            compiled.push((pattern.to_string(), regex));
        }
        Ok(ExcludePatterns { patterns: compiled })
    }

    /// True when any pattern matches anywhere in `text`.
    pub fn excludes(&self, text: &str) -> bool {
        self.patterns.iter().any(|(_, r)| r.is_match(text))
    }

    /// The first pattern (as given) that matches `text`, for logs.
    pub fn matching_pattern(&self, text: &str) -> Option<&str> {
        self.patterns
            .iter()
            .find(|(_, r)| r.is_match(text))
            .map(|(p, _)| p.as_str())
    }

    /// True when there is no pattern.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

/// A literal character in `regex` syntax (inside or outside a class).
fn lit(c: char, out: &mut String) {
    if c.is_alphanumeric() || c == '_' {
        out.push(c);
    } else {
        out.push_str(&format!("\\x{{{:X}}}", c as u32));
    }
}

/// Translates one GNU basic regular expression into `regex` syntax.
fn bre_to_regex(p: &str) -> Result<String, String> {
    let chars: Vec<char> = p.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    // Where `^` is an anchor and `*` is literal: pattern start, after `\(` and `\|`.
    let mut at_start = true;
    // Whether the last emitted item can take a repetition operator.
    let mut have_atom = false;
    // Whether the last emitted item is a repetition (GNU accepts `a**` as `a*`).
    let mut after_repeat = false;
    let mut depth = 0usize;
    while i < chars.len() {
        let c = chars[i];
        let was_start = at_start;
        at_start = false;
        match c {
            '\\' => {
                let Some(&n) = chars.get(i + 1) else {
                    return Err("trailing backslash".into());
                };
                i += 2;
                match n {
                    '(' => {
                        out.push('(');
                        depth += 1;
                        at_start = true;
                        have_atom = false;
                        after_repeat = false;
                        continue;
                    }
                    ')' => {
                        if depth == 0 {
                            return Err("unmatched \\)".into());
                        }
                        depth -= 1;
                        out.push(')');
                    }
                    '|' => {
                        out.push('|');
                        at_start = true;
                        have_atom = false;
                        after_repeat = false;
                        continue;
                    }
                    '{' => {
                        let close = (i..chars.len().saturating_sub(1))
                            .find(|&k| chars[k] == '\\' && chars[k + 1] == '}');
                        let Some(close) = close else {
                            return Err("unmatched \\{".into());
                        };
                        let body: String = chars[i..close].iter().collect();
                        let valid = !body.is_empty()
                            && body.chars().all(|c| c.is_ascii_digit() || c == ',')
                            && body.matches(',').count() <= 1
                            && !body.starts_with(',');
                        if !valid {
                            return Err(format!("invalid interval \\{{{body}\\}}"));
                        }
                        if !have_atom {
                            return Err(format!("interval \\{{{body}\\}} has nothing to repeat"));
                        }
                        out.push('{');
                        out.push_str(&body);
                        out.push('}');
                        i = close + 2;
                        after_repeat = true;
                        continue;
                    }
                    '}' => return Err("unmatched \\}".into()),
                    '+' | '?' => {
                        if have_atom && !after_repeat {
                            out.push(n);
                            after_repeat = true;
                        } else if !have_atom {
                            lit(n, &mut out);
                            have_atom = true;
                            after_repeat = false;
                        }
                        continue;
                    }
                    '1'..='9' => return Err(format!("back-reference \\{n} is not supported")),
                    '<' => {
                        out.push_str(r"\b{start}");
                        have_atom = false;
                        after_repeat = false;
                        continue;
                    }
                    '>' => {
                        out.push_str(r"\b{end}");
                        have_atom = false;
                        after_repeat = false;
                        continue;
                    }
                    'b' | 'B' => {
                        out.push('\\');
                        out.push(n);
                        have_atom = false;
                        after_repeat = false;
                        continue;
                    }
                    '`' => {
                        out.push_str(r"\A");
                        have_atom = false;
                        after_repeat = false;
                        continue;
                    }
                    '\'' => {
                        out.push_str(r"\z");
                        have_atom = false;
                        after_repeat = false;
                        continue;
                    }
                    'w' | 'W' | 's' | 'S' => {
                        out.push('\\');
                        out.push(n);
                    }
                    other => lit(other, &mut out),
                }
                have_atom = true;
                after_repeat = false;
            }
            '*' => {
                if was_start || !have_atom {
                    lit('*', &mut out);
                    have_atom = true;
                    after_repeat = false;
                } else if !after_repeat {
                    out.push('*');
                    after_repeat = true;
                }
                i += 1;
            }
            '^' if was_start => {
                out.push('^');
                at_start = true;
                have_atom = false;
                i += 1;
            }
            '$' if i + 1 == chars.len()
                || (chars[i + 1] == '\\'
                    && matches!(chars.get(i + 2), Some(&')') | Some(&'|'))) =>
            {
                out.push('$');
                have_atom = false;
                after_repeat = false;
                i += 1;
            }
            '.' => {
                out.push('.');
                have_atom = true;
                after_repeat = false;
                i += 1;
            }
            '[' => {
                i = bracket(&chars, i, &mut out)?;
                have_atom = true;
                after_repeat = false;
            }
            other => {
                lit(other, &mut out);
                have_atom = true;
                after_repeat = false;
                i += 1;
            }
        }
    }
    if depth > 0 {
        return Err("unmatched \\(".into());
    }
    Ok(out)
}

/// Translates the bracket expression starting at `chars[start] == '['`; returns the index after
/// its closing `]`.
fn bracket(chars: &[char], start: usize, out: &mut String) -> Result<usize, String> {
    let mut i = start + 1;
    let mut class = String::from("[");
    if chars.get(i) == Some(&'^') {
        class.push('^');
        i += 1;
    }
    let mut first = true;
    let mut items = 0;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err("unmatched [".into());
        };
        if c == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        if c == '[' && matches!(chars.get(i + 1), Some(&':') | Some(&'.') | Some(&'=')) {
            let kind = chars[i + 1];
            let close = (i + 2..chars.len().saturating_sub(1))
                .find(|&k| chars[k] == kind && chars[k + 1] == ']');
            let Some(close) = close else {
                return Err(format!("unterminated [{kind}"));
            };
            let name: String = chars[i + 2..close].iter().collect();
            if kind != ':' {
                return Err(format!(
                    "collating elements [{kind}{name}{kind}] are not supported"
                ));
            }
            const CLASSES: [&str; 12] = [
                "alnum", "alpha", "blank", "cntrl", "digit", "graph", "lower", "print", "punct",
                "space", "upper", "xdigit",
            ];
            if !CLASSES.contains(&name.as_str()) {
                return Err(format!("unknown character class [:{name}:]"));
            }
            class.push_str(&format!("[:{name}:]"));
            i = close + 2;
            items += 1;
            continue;
        }
        // A range `c-d` (a `-` right before the closing `]` is literal).
        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|&d| d != ']') {
            let d = chars[i + 2];
            if d < c {
                return Err(format!("invalid range {c}-{d}"));
            }
            lit(c, &mut class);
            class.push('-');
            lit(d, &mut class);
            i += 3;
        } else {
            lit(c, &mut class);
            i += 1;
        }
        items += 1;
    }
    debug_assert!(items > 0);
    class.push(']');
    out.push_str(&class);
    Ok(i)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn ex(patterns: &[&str]) -> ExcludePatterns {
        ExcludePatterns::new(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn empty_and_blank_patterns_exclude_nothing() {
        let e = ex(&[]);
        assert!(e.is_empty());
        assert!(!e.excludes("aws-ebs-csi-driver"));
        let e = ex(&["", "   ", "\n"]);
        assert!(e.is_empty(), "blank lines are stripped, as release.sh does");
        assert!(!e.excludes("anything"));
    }

    #[test]
    fn plain_words_match_anywhere_and_are_trimmed() {
        let e = ex(&["  aws ", "vsphere"]);
        assert!(e.excludes("aws-ebs-csi-driver"));
        assert!(e.excludes("quay.io/x/vsphere-problem-detector"));
        assert!(e.excludes("openshift/aws"));
        assert!(!e.excludes("azure-disk-csi-driver"));
        assert!(!e.excludes("AWS"), "case-sensitive like grep");
        assert_eq!(e.matching_pattern("x-vsphere-y"), Some("vsphere"));
    }

    #[test]
    fn basic_regex_semantics_like_grep_g() {
        // `|`, `+`, `?`, `(`, `)`, `{`, `}` are literal in a BRE...
        let e = ex(&["aws|azure"]);
        assert!(!e.excludes("aws"));
        assert!(!e.excludes("azure"));
        assert!(e.excludes("x aws|azure y"));
        assert!(ex(&["a+b"]).excludes("xa+b"));
        assert!(!ex(&["a+b"]).excludes("aab"));
        assert!(ex(&["f(x)"]).excludes("f(x)"));
        assert!(ex(&["a{2}"]).excludes("a{2}"));
        // ...and their backslashed forms are operators (GNU).
        let e = ex(&[r"aws\|azure"]);
        assert!(e.excludes("aws-x") && e.excludes("y-azure"));
        assert!(ex(&[r"a\+b"]).excludes("xaaab"));
        assert!(ex(&[r"colou\?r"]).excludes("color"));
        assert!(ex(&[r"\(ab\)\{2\}"]).excludes("xabab"));
        assert!(!ex(&[r"\(ab\)\{2\}"]).excludes("xab"));
        assert!(ex(&[r"a\{2,\}"]).excludes("baa"));
        // Dot, star, anchors, brackets and classes.
        assert!(ex(&["ovn.*kube"]).excludes("ovn-kubernetes"));
        assert!(ex(&["^ironic"]).excludes("ironic-agent"));
        assert!(!ex(&["^ironic"]).excludes("x-ironic"));
        assert!(ex(&["agent$"]).excludes("ironic-agent"));
        assert!(!ex(&["agent$"]).excludes("agent-x"));
        assert!(
            ex(&["a^b"]).excludes("a^b"),
            "^ not at the start is literal"
        );
        assert!(ex(&["a$b"]).excludes("a$b"), "$ not at the end is literal");
        assert!(ex(&["*x"]).excludes("a*x"), "leading * is literal");
        assert!(!ex(&["*x"]).excludes("ax"));
        assert!(ex(&["ab**c"]).excludes("abbc"));
        assert!(ex(&["v[0-9][[:digit:]]"]).excludes("v42"));
        assert!(!ex(&["v[0-9][[:digit:]]"]).excludes("v4x"));
        assert!(ex(&["[^a-z]x"]).excludes("1x"));
        assert!(!ex(&["[^a-z]x"]).excludes("ax"));
        assert!(ex(&["[]]"]).excludes("a]"));
        assert!(
            ex(&[r"[\]"]).excludes(r"a\b"),
            "backslash is literal inside brackets"
        );
        assert!(ex(&["[a-]"]).excludes("-"));
        assert!(ex(&["[&~]"]).excludes("&"));
        assert!(ex(&[r"\<kube"]).excludes("ovn-kube"));
        assert!(!ex(&[r"\<kube"]).excludes("ovnkube"));
        assert!(ex(&[r"\bcsi\b"]).excludes("aws-csi-driver"));
        assert!(ex(&[r"a\.b"]).excludes("a.b"));
        assert!(!ex(&[r"a\.b"]).excludes("axb"));
        // A newline inside one entry is two patterns.
        let e = ex(&["aws\nazure"]);
        assert!(e.excludes("aws") && e.excludes("azure"));
    }

    #[test]
    fn invalid_patterns_name_the_pattern() {
        for (pattern, needle) in [
            ("[abc", "unmatched ["),
            (r"\(ab", r"unmatched \("),
            (r"ab\)", r"unmatched \)"),
            (r"a\{x\}", "invalid interval"),
            (r"a\{2", r"unmatched \{"),
            (r"\{2\}", "nothing to repeat"),
            (r"\(a\)\1", "back-reference"),
            ("x\\", "trailing backslash"),
            ("[[:nope:]]", "unknown character class"),
            ("[[.a.]]", "collating"),
            ("[z-a]", "invalid range"),
        ] {
            let err = ExcludePatterns::new(&[pattern.to_string()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{pattern:?}")), "{pattern}: {err}");
            assert!(err.contains(needle), "{pattern}: {err} lacks {needle}");
        }
    }
}
