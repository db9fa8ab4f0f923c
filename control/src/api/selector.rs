//! Label and field selectors as kube-apiserver parses them: the string forms of the
//! `labelSelector` and `fieldSelector` query parameters, and metav1.LabelSelector objects.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A conjunction of requirements; the empty selector matches everything.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
    /// A null metav1.LabelSelector: matches nothing.
    nothing: bool,
}

fn check_key(k: &str) -> Result<(), SelectorError> {
    if crate::registry::meta::is_qualified_name(k) {
        Ok(())
    } else {
        Err(SelectorError(format!(
            "invalid label key \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        )))
    }
}

fn check_value(v: &str) -> Result<(), SelectorError> {
    if crate::registry::meta::is_label_value(v) {
        Ok(())
    } else {
        Err(SelectorError(format!(
            "invalid label value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        )))
    }
}

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, SelectorError> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(SelectorError(format!("unexpected ')' in \"{s}\"")));
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError(format!(
            "found '(', expected: ')' in \"{s}\""
        )));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn set_values(s: &str) -> Result<Vec<String>, SelectorError> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| SelectorError(format!("found '{s}', expected: '('")))?;
    let mut vals: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if vals.len() == 1 && vals[0].is_empty() {
        return Err(SelectorError(
            "for 'in', 'notin' operators, values set can't be empty".into(),
        ));
    }
    for v in &vals {
        check_value(v)?;
    }
    vals.sort();
    vals.dedup();
    Ok(vals)
}

fn parse_requirement(part: &str) -> Result<Requirement, SelectorError> {
    let p = part.trim();
    if p.is_empty() {
        return Err(SelectorError("found '', expected: identifier".into()));
    }
    // A requirement must start with a key or `!`.
    if let Some(op) = ["!=", "==", "=", "(", ")"]
        .iter()
        .find(|op| p.starts_with(**op))
    {
        return Err(SelectorError(format!(
            "found '{op}', expected: !, identifier, or 'end of string'"
        )));
    }
    if let Some(key) = p.strip_prefix('!') {
        let key = key.trim();
        check_key(key)?;
        return Ok(Requirement {
            key: key.into(),
            op: Op::DoesNotExist,
        });
    }
    // Set-based: `key in (…)`, `key notin (…)`.
    let words: Vec<&str> = p.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let rest = words[1].trim_start();
        for (kw, notin) in [("notin", true), ("in", false)] {
            if let Some(vals) = rest.strip_prefix(kw) {
                if vals.trim_start().starts_with('(') {
                    check_key(words[0])?;
                    let vals = set_values(vals)?;
                    let op = if notin { Op::NotIn(vals) } else { Op::In(vals) };
                    return Ok(Requirement {
                        key: words[0].into(),
                        op,
                    });
                }
            }
        }
    }
    for (tok, kind) in [("!=", 0), ("==", 1), ("=", 1), (">", 2), ("<", 3)] {
        if let Some((k, v)) = p.split_once(tok) {
            let (k, v) = (k.trim(), v.trim());
            check_key(k)?;
            // A value is one token: what follows it must be ',' or the end.
            if let Some((_, extra)) = v.split_once(char::is_whitespace) {
                let next = extra.trim_start().split(char::is_whitespace).next();
                return Err(SelectorError(format!(
                    "found '{}', expected: ',' or 'end of string'",
                    next.unwrap_or("")
                )));
            }
            let op = match kind {
                0 => {
                    check_value(v)?;
                    Op::NotEq(v.into())
                }
                1 => {
                    check_value(v)?;
                    Op::Eq(v.into())
                }
                _ => {
                    let n: i64 = v.parse().map_err(|_| {
                        SelectorError(format!(
                            "for 'Gt', 'Lt' operators, the value must be an integer: \"{v}\""
                        ))
                    })?;
                    if kind == 2 {
                        Op::Gt(n)
                    } else {
                        Op::Lt(n)
                    }
                }
            };
            return Ok(Requirement { key: k.into(), op });
        }
    }
    if p.contains(char::is_whitespace) {
        return Err(SelectorError(format!(
            "found '{p}', expected: in, notin, =, ==, !=, gt, lt"
        )));
    }
    check_key(p)?;
    Ok(Requirement {
        key: p.into(),
        op: Op::Exists,
    })
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, SelectorError> {
        if s.trim().is_empty() {
            return Ok(LabelSelector::default());
        }
        let parts = split_top(s)?;
        if parts.len() > 1 && parts.last().is_some_and(|p| p.trim().is_empty()) {
            return Err(SelectorError(
                "found '', expected: identifier after ','".into(),
            ));
        }
        let mut reqs = parts
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<Vec<_>, _>>()?;
        // As kube-apiserver's parser and LabelSelectorAsSelector: requirements sorted by
        // key, so that the string form is deterministic.
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            reqs,
            nothing: false,
        })
    }

    /// A metav1.LabelSelector: matchLabels and matchExpressions (In, NotIn, Exists,
    /// DoesNotExist). `{}` matches everything; null or absent matches nothing, as
    /// LabelSelectorAsSelector makes them.
    pub fn from_json(v: &Value) -> Result<LabelSelector, SelectorError> {
        if v.is_null() {
            return Ok(LabelSelector {
                reqs: vec![],
                nothing: true,
            });
        }
        let mut reqs = Vec::new();
        if let Some(m) = v["matchLabels"].as_object() {
            for (k, val) in m {
                check_key(k)?;
                let val = val.as_str().unwrap_or_default();
                check_value(val)?;
                reqs.push(Requirement {
                    key: k.clone(),
                    op: Op::Eq(val.into()),
                });
            }
        }
        for e in v["matchExpressions"].as_array().into_iter().flatten() {
            let key = e["key"].as_str().unwrap_or_default().to_string();
            check_key(&key)?;
            let mut values: Vec<String> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect();
            values.sort();
            values.dedup();
            let op = e["operator"].as_str().unwrap_or_default();
            match op {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(SelectorError(
                        "for 'in', 'notin' operators, values set can't be empty".into(),
                    ))
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(SelectorError(
                        "values set must be empty for exists and does not exist".into(),
                    ))
                }
                _ => {}
            }
            for v in &values {
                check_value(v)?;
            }
            let op = match op {
                "In" => Op::In(values),
                "NotIn" => Op::NotIn(values),
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err(SelectorError(format!(
                        "\"{other}\" is not a valid label selector operator"
                    )))
                }
            };
            reqs.push(Requirement { key, op });
        }
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            reqs,
            nothing: false,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty() && !self.nothing
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        if self.nothing {
            return false;
        }
        self.reqs.iter().all(|r| {
            let v = labels.get(&r.key);
            match &r.op {
                Op::Eq(x) => v == Some(x),
                Op::NotEq(x) => v != Some(x),
                Op::In(xs) => v.is_some_and(|v| xs.contains(v)),
                Op::NotIn(xs) => v.is_none_or(|v| !xs.contains(v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
                Op::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                Op::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .reqs
            .iter()
            .map(|r| match &r.op {
                Op::Eq(v) => format!("{}={v}", r.key),
                Op::NotEq(v) => format!("{}!={v}", r.key),
                Op::In(v) => format!("{} in ({})", r.key, v.join(",")),
                Op::NotIn(v) => format!("{} notin ({})", r.key, v.join(",")),
                Op::Exists => r.key.clone(),
                Op::DoesNotExist => format!("!{}", r.key),
                Op::Gt(n) => format!("{}>{n}", r.key),
                Op::Lt(n) => format!("{}<{n}", r.key),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// `field=value`, `field==value`, `field!=value`, joined by commas; `\` escapes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

fn unescape_split(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.last_mut().expect("never empty").push('\\');
                if let Some(n) = chars.next() {
                    out.last_mut().expect("never empty").push(n);
                }
            }
            c if c == sep => out.push(String::new()),
            c => out.last_mut().expect("never empty").push(c),
        }
    }
    out
}

/// Splits a term at its leftmost unescaped operator (`!=`, `==`, `=`), as
/// kube-apiserver's splitTerm: `(field, equals, value)`.
fn split_term(term: &str) -> Option<(&str, bool, &str)> {
    let mut escaped = false;
    for (i, c) in term.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        let rest = &term[i..];
        match c {
            '\\' => escaped = true,
            '!' if rest.starts_with("!=") => return Some((&term[..i], false, &term[i + 2..])),
            '=' if rest.starts_with("==") => return Some((&term[..i], true, &term[i + 2..])),
            '=' => return Some((&term[..i], true, &term[i + 1..])),
            _ => {}
        }
    }
    None
}

fn unescape(s: &str) -> Result<String, SelectorError> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ ('\\' | ',' | '=')) => out.push(n),
                Some(n) => return Err(SelectorError(format!("invalid escape sequence: \\{n}"))),
                None => return Err(SelectorError("unterminated escape sequence".into())),
            }
        } else if c == '=' || c == ',' {
            return Err(SelectorError(format!("unescaped character in value: {c}")));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, SelectorError> {
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector { terms });
        }
        for part in unescape_split(s, ',') {
            let Some((k, eq, v)) = split_term(&part) else {
                return Err(SelectorError(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let k = k.trim();
            if k.is_empty() {
                return Err(SelectorError(format!(
                    "invalid selector: '{s}'; a field name is missing"
                )));
            }
            terms.push((k.to_string(), eq, unescape(v)?));
        }
        Ok(FieldSelector { terms })
    }

    pub fn fields(&self) -> Vec<&str> {
        self.terms.iter().map(|(k, _, _)| k.as_str()).collect()
    }

    /// The value a term requires of a field, for `field=value` terms.
    pub fn required(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|(k, eq, _)| k == field && *eq)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        self.terms.iter().all(|(k, eq, v)| {
            let have = get(k).unwrap_or_default();
            (have == *v) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_operator_of_the_string_form() {
        let s = LabelSelector::parse(
            "app=web,tier!=db,env in (prod, stage),zone notin (a),team,!legacy,gen>2",
        )
        .unwrap();
        let good = labels(&[
            ("app", "web"),
            ("tier", "front"),
            ("env", "prod"),
            ("zone", "b"),
            ("team", "x"),
            ("gen", "3"),
        ]);
        assert!(s.matches(&good));
        let mut bad = good.clone();
        bad.insert("legacy".into(), "1".into());
        assert!(!s.matches(&bad));
        let mut bad = good.clone();
        bad.insert("env".into(), "dev".into());
        assert!(!s.matches(&bad));
        let mut bad = good;
        bad.insert("gen".into(), "2".into());
        assert!(!s.matches(&bad));
        assert!(LabelSelector::parse("a==b")
            .unwrap()
            .matches(&labels(&[("a", "b")])));
        assert!(LabelSelector::parse("").unwrap().matches(&labels(&[])));
    }

    #[test]
    fn bad_selectors_are_errors_and_display_round_trips() {
        for bad in ["a in (", "a in ()", "Bad Key", "a=b c", "-a=b", "a=(b"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
        let s = LabelSelector::parse("x in (b,a),!y,z=1").unwrap();
        assert_eq!(s.to_string(), "x in (a,b),!y,z=1");
        assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn json_selectors_and_the_null_one() {
        let v = serde_json::json!({ "matchLabels": { "app": "web" }, "matchExpressions": [{ "key": "tier", "operator": "NotIn", "values": ["db"] }] });
        let s = LabelSelector::from_json(&v).unwrap();
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db")])));
        assert!(LabelSelector::from_json(&serde_json::json!({}))
            .unwrap()
            .matches(&labels(&[])));
        assert!(!LabelSelector::from_json(&Value::Null)
            .unwrap()
            .matches(&labels(&[])));
    }

    #[test]
    fn field_selectors_with_escapes() {
        let f = FieldSelector::parse("spec.nodeName=w1,status.phase!=Failed,metadata.name=a\\,b")
            .unwrap();
        assert_eq!(
            f.fields(),
            ["spec.nodeName", "status.phase", "metadata.name"]
        );
        let get = |k: &str| match k {
            "spec.nodeName" => Some("w1".to_string()),
            "status.phase" => Some("Running".to_string()),
            "metadata.name" => Some("a,b".to_string()),
            _ => None,
        };
        assert!(f.matches(&get));
        assert_eq!(f.required("spec.nodeName"), Some("w1"));
        assert!(FieldSelector::parse("nofield").is_err());
        assert!(FieldSelector::parse("a=\\x").is_err());
    }

    #[test]
    fn not_equals_and_not_in_match_a_missing_label() {
        assert!(LabelSelector::parse("c!=d").unwrap().matches(&labels(&[])));
        assert!(!LabelSelector::parse("c!=d")
            .unwrap()
            .matches(&labels(&[("c", "d")])));
        assert!(LabelSelector::parse("c notin (d)")
            .unwrap()
            .matches(&labels(&[])));
    }

    #[test]
    fn the_string_form_is_sorted_by_key() {
        for src in [
            "b=1,a in (y,x),!c",
            "app==web,tier notin (db)",
            "k8s.io/app=x,z",
            "a=",
        ] {
            let s = LabelSelector::parse(src).unwrap();
            assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s, "{src}");
        }
        assert_eq!(
            LabelSelector::parse("b=1,a in (y,x),!c")
                .unwrap()
                .to_string(),
            "a in (x,y),b=1,!c"
        );
        let s = LabelSelector::from_json(&serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["fe", "be"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ]
        }))
        .unwrap();
        assert_eq!(s.to_string(), "app=web,!canary,tier in (be,fe)");
    }

    #[test]
    fn bad_input_gets_kube_apiservers_messages() {
        let err = |s: &str| LabelSelector::parse(s).unwrap_err().to_string();
        assert_eq!(err("a=b,"), "found '', expected: identifier after ','");
        assert_eq!(err("a=b c"), "found 'c', expected: ',' or 'end of string'");
        assert_eq!(
            err("=b"),
            "found '=', expected: !, identifier, or 'end of string'"
        );
        assert!(err("a in ()").contains("can't be empty"));
        let json_err = |v: serde_json::Value| LabelSelector::from_json(&v).unwrap_err().to_string();
        assert_eq!(
            json_err(serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Gt"}]})),
            "\"Gt\" is not a valid label selector operator"
        );
        assert_eq!(
            json_err(
                serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]})
            ),
            "for 'in', 'notin' operators, values set can't be empty"
        );
        assert_eq!(
            json_err(
                serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})
            ),
            "values set must be empty for exists and does not exist"
        );
    }

    #[test]
    fn field_selector_values_escape_their_operators() {
        let s = FieldSelector::parse(r"a=x\,y\=z\\").unwrap();
        assert_eq!(s.required("a"), Some(r"x,y=z\"));
        assert_eq!(
            FieldSelector::parse("abc").unwrap_err().to_string(),
            "invalid selector: 'abc'; can't understand 'abc'"
        );
        assert_eq!(
            FieldSelector::parse(r"a=\q").unwrap_err().to_string(),
            r"invalid escape sequence: \q"
        );
        assert_eq!(
            FieldSelector::parse("a=b=c").unwrap_err().to_string(),
            "unescaped character in value: ="
        );
        // The leftmost operator splits the term.
        let s = FieldSelector::parse(r"a!=b\=c").unwrap();
        assert!(s.matches(&|_: &str| Some("x".to_string())));
        assert!(!s.matches(&|_: &str| Some("b=c".to_string())));
    }
}
