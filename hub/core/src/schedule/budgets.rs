//! Reading PrecacheBudgets: the quantity syntax of `bandwidth`, the `host[:port]` of a registry
//! entry, and a budget's spec checked field by field into the limits the scheduler applies
//! ([`Budget`]), or the reason and message of its `Valid=False` condition ([`Invalid`]).

use std::collections::BTreeMap;

use talm_shared::api::LabelSelector;
use talm_shared::api::checks::check_label_selector;
use talm_shared::api::precachebudget::PrecacheBudget;

use super::MIN_SHARE;
use crate::conditions::budget::reasons;
use crate::selection::selector_matches;

/// Why a quantity does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not the quantity syntax at all.
    #[error(
        "is not a quantity (expected a number with an optional suffix, such as 25Mi, 200M, 1.5Gi, 500k or 1500000)"
    )]
    Syntax,
    /// Zero or negative.
    #[error("must be greater than zero")]
    NotPositive,
    /// Beyond what a 64-bit count of bytes holds.
    #[error("is too large")]
    TooLarge,
}

/// Parses a Kubernetes quantity (`25Mi`, `200M`, `1.5Gi`, `500k`, `1e6`, `1500000`) into a
/// whole number, rounding a fraction up as Kubernetes does. The value must be greater than zero.
///
/// Suffixes: binary `Ki Mi Gi Ti Pi Ei` (powers of 1024), decimal `n u m k M G T P E` (powers of
/// 1000; `m` is a thousandth), or an exponent `e`/`E` followed by an integer.
pub fn parse_quantity(text: &str) -> Result<i64, QuantityError> {
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let split = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(split);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(QuantityError::Syntax);
    }
    // Numerator and denominator of the value; a long mantissa is too large, not garbage.
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(QuantityError::TooLarge);
    }
    let mut num: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| QuantityError::Syntax)?
    };
    let frac_len = u32::try_from(frac_part.len()).map_err(|_| QuantityError::TooLarge)?;
    let mut den: u128 = 10u128
        .checked_pow(frac_len)
        .ok_or(QuantityError::TooLarge)?;
    let (mul, div): (u128, u128) = match suffix {
        "" => (1, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1_000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..]
                .parse()
                .ok()
                .filter(|_| s[1..].bytes().any(|b| b.is_ascii_digit()))
                .ok_or(QuantityError::Syntax)?;
            if exp.unsigned_abs() > 30 {
                return Err(if exp > 0 && num > 0 {
                    QuantityError::TooLarge
                } else {
                    QuantityError::Syntax
                });
            }
            let p = 10u128.pow(exp.unsigned_abs());
            if exp >= 0 { (p, 1) } else { (1, p) }
        }
        _ => return Err(QuantityError::Syntax),
    };
    num = num.checked_mul(mul).ok_or(QuantityError::TooLarge)?;
    den = den.checked_mul(div).ok_or(QuantityError::TooLarge)?;
    if num == 0 || negative {
        return Err(QuantityError::NotPositive);
    }
    let whole = num.div_ceil(den);
    i64::try_from(whole).map_err(|_| QuantityError::TooLarge)
}

/// Checks a registry host as images name it: `host[:port]`, with no scheme, path, user or
/// spaces. The host is DNS labels (letters, digits, `-`, not at either end of a label) joined
/// by dots, or a bracketed IPv6 address; the port is 1–65535.
pub fn check_host(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    if text.contains("://") {
        return Err("must be host[:port] without a scheme".into());
    }
    if let Some(c) = text.chars().find(|c| matches!(c, '/' | '@' | '?' | '#')) {
        return Err(format!(
            "must be host[:port] without a path or user ({c:?})"
        ));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| "an IPv6 host needs its closing ]".to_string())?;
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!("{addr:?} is not an IPv6 address"));
        }
        match after {
            "" => (None, None),
            p => (
                None,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| "only :port may follow ]".to_string())?,
                ),
            ),
        }
    } else {
        match text.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(text), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err("the host part is empty".into());
        }
        for label in host.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(format!("{label:?} is not a valid DNS label of the host"));
            }
        }
    }
    if let Some(port) = port {
        let ok = !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !ok {
            return Err(format!("port {port:?} is not a number from 1 to 65535"));
        }
    }
    Ok(())
}

/// One limit: shared bandwidth and a number of concurrent clusters, each optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limit {
    /// Bytes per second shared by the clusters under the limit.
    pub bandwidth: Option<i64>,
    /// `maxConcurrentClusters`.
    pub max_concurrent: Option<i64>,
}

impl Limit {
    /// How many clusters may download at once under this limit: `maxConcurrentClusters`, or for
    /// a bandwidth-only limit as many as still get [`MIN_SHARE`] each (at least one); `None`
    /// for no limit.
    pub fn concurrency(&self) -> Option<i64> {
        self.max_concurrent
            .or_else(|| self.bandwidth.map(|b| (b / MIN_SHARE).max(1)))
    }
}

/// A registry entry of a valid budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryLimit {
    /// `host[:port]`.
    pub host: String,
    /// Its limit.
    pub limit: Limit,
}

/// A valid budget, ready to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget<'a> {
    /// The budget's name.
    pub name: &'a str,
    /// The selector (`None`: every cluster).
    pub selector: Option<&'a LabelSelector>,
    /// The budget's own limit.
    pub limit: Limit,
    /// Its registry entries, in spec order.
    pub registries: Vec<RegistryLimit>,
}

impl Budget<'_> {
    /// Whether the budget selects a cluster with these labels.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.is_none_or(|s| selector_matches(s, labels))
    }
}

/// Why a budget is not applied: its `Valid=False` reason and a message naming the field and
/// the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The condition reason.
    pub reason: &'static str,
    /// The condition message.
    pub message: String,
}

fn bandwidth(field: &str, value: Option<&String>) -> Result<Option<i64>, Invalid> {
    value
        .map(|v| {
            parse_quantity(v.trim()).map_err(|e| Invalid {
                reason: reasons::INVALID_BANDWIDTH,
                message: format!("{field}: {v:?} {e}"),
            })
        })
        .transpose()
}

fn max_concurrent(field: &str, value: Option<i64>) -> Result<Option<i64>, Invalid> {
    match value {
        Some(n) if n < 1 => Err(Invalid {
            reason: reasons::INVALID_MAX_CONCURRENT_CLUSTERS,
            message: format!("{field}: {n} must be at least 1"),
        }),
        v => Ok(v),
    }
}

/// Checks a budget's spec; the first invalid field (in spec order) is reported.
pub fn parse(b: &PrecacheBudget) -> Result<Budget<'_>, Invalid> {
    let spec = &b.spec;
    if let Some(sel) = &spec.cluster_selector {
        check_label_selector(sel).map_err(|e| Invalid {
            reason: reasons::INVALID_SELECTOR,
            message: format!("spec.clusterSelector.{}: {}", e.path, e.message),
        })?;
    }
    let limit = Limit {
        bandwidth: bandwidth("spec.bandwidth", spec.bandwidth.as_ref())?,
        max_concurrent: max_concurrent("spec.maxConcurrentClusters", spec.max_concurrent_clusters)?,
    };
    let mut registries = Vec::with_capacity(spec.registries.len());
    for (i, r) in spec.registries.iter().enumerate() {
        check_host(&r.host).map_err(|e| Invalid {
            reason: reasons::INVALID_REGISTRY_HOST,
            message: format!("spec.registries[{i}].host: {:?} {e}", r.host),
        })?;
        if let Some(j) = spec.registries[..i].iter().position(|o| o.host == r.host) {
            return Err(Invalid {
                reason: reasons::INVALID_REGISTRY_HOST,
                message: format!(
                    "spec.registries[{i}].host: {:?} is already listed at spec.registries[{j}]",
                    r.host
                ),
            });
        }
        registries.push(RegistryLimit {
            host: r.host.clone(),
            limit: Limit {
                bandwidth: bandwidth(
                    &format!("spec.registries[{i}].bandwidth"),
                    r.bandwidth.as_ref(),
                )?,
                max_concurrent: max_concurrent(
                    &format!("spec.registries[{i}].maxConcurrentClusters"),
                    r.max_concurrent_clusters,
                )?,
            },
        });
    }
    Ok(Budget {
        name: b.metadata.name.as_deref().unwrap_or_default(),
        selector: spec.cluster_selector.as_ref(),
        limit,
        registries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_kubernetes_syntax() {
        let ok = [
            ("25Mi", 25 << 20),
            ("200M", 200_000_000),
            ("1.5Gi", 3 << 29),
            ("500k", 500_000),
            ("1500000", 1_500_000),
            ("+7", 7),
            ("1e6", 1_000_000),
            ("2E3", 2_000),
            (".5Ki", 512),
            ("1.", 1),
            // Fractions of a byte round up, as Kubernetes' Value() does.
            ("1.5", 2),
            ("500m", 1),
            ("0.1", 1),
            ("7Ei", 7 << 60),
        ];
        for (text, want) in ok {
            assert_eq!(parse_quantity(text), Ok(want), "{text}");
        }
        let bad = [
            ("", QuantityError::Syntax),
            ("abc", QuantityError::Syntax),
            ("25MiB", QuantityError::Syntax),
            ("25 Mi", QuantityError::Syntax),
            ("1.2.3", QuantityError::Syntax),
            ("Mi", QuantityError::Syntax),
            ("1e", QuantityError::Syntax),
            ("1e+", QuantityError::Syntax),
            ("0", QuantityError::NotPositive),
            ("0Mi", QuantityError::NotPositive),
            ("-5Mi", QuantityError::NotPositive),
            ("-0", QuantityError::NotPositive),
            ("8Ei", QuantityError::TooLarge),
            ("1e40", QuantityError::TooLarge),
            (
                "99999999999999999999999999999999999",
                QuantityError::TooLarge,
            ),
        ];
        for (text, want) in bad {
            assert_eq!(parse_quantity(text), Err(want), "{text}");
        }
    }

    #[test]
    fn registry_hosts() {
        for ok in [
            "mirror.example.com",
            "mirror.example.com:5000",
            "localhost",
            "10.0.0.1:443",
            "[fd00::1]:5000",
            "[::1]",
            "Registry-1.Example",
        ] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "must not be empty"),
            ("https://mirror", "without a scheme"),
            ("mirror/ocp", "without a path"),
            ("user@mirror", "without a path or user"),
            ("mirror:", "port \"\""),
            ("mirror:0", "port \"0\""),
            ("mirror:70000", "port \"70000\""),
            ("mirror:ab", "port \"ab\""),
            ("-mirror", "not a valid DNS label"),
            ("mirror..example", "\"\" is not a valid DNS label"),
            ("mir ror", "not a valid DNS label"),
            (":5000", "the host part is empty"),
            ("[fd00::1", "closing ]"),
            ("[fd00::1]x", "only :port"),
            ("[zz]", "not an IPv6 address"),
        ] {
            let e = check_host(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn concurrency_of_a_limit() {
        let l = |bandwidth, max_concurrent| Limit {
            bandwidth,
            max_concurrent,
        };
        assert_eq!(l(None, None).concurrency(), None);
        assert_eq!(l(Some(10 * MIN_SHARE), Some(3)).concurrency(), Some(3));
        assert_eq!(l(Some(10 * MIN_SHARE + 5), None).concurrency(), Some(10));
        // Below MIN_SHARE one cluster still goes.
        assert_eq!(l(Some(1000), None).concurrency(), Some(1));
    }
}
