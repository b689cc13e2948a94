//! `--set` as Helm parses it: `a.b.c=value`, several assignments per flag separated by
//! commas, `a[0]=x` for list items, `a={x,y}` for a list, `\.` and `\,` for a literal dot or
//! comma. `true`/`false` become booleans, integers numbers, `null` removes the key, and the
//! rest is a string.

use serde_yaml::{Mapping, Value};

/// A `--set` that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--set {arg:?}: expected KEY=VALUE (e.g. meshConfig.accessLogFile=/dev/stdout)")]
    NoValue { arg: String },
    #[error("--set {arg:?}: empty key segment in {key:?}")]
    EmptySegment { arg: String, key: String },
    #[error("--set {arg:?}: bad list index in {key:?}: expected KEY[N] with N at most {MAX_INDEX}")]
    BadIndex { arg: String, key: String },
    #[error("--set {arg:?}: unbalanced braces in the value")]
    Braces { arg: String },
}

/// Lists are grown to the index given; a typo such as `a[99999]` should fail, not allocate.
const MAX_INDEX: usize = 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// Applies one `--set` flag to `tree`.
pub fn apply(tree: &mut Value, arg: &str) -> Result<(), Error> {
    for assignment in split_top_level(arg, ',').map_err(|()| Error::Braces { arg: arg.into() })? {
        if assignment.is_empty() {
            continue;
        }
        let Some((key, value)) = split_once_unescaped(&assignment, '=') else {
            return Err(Error::NoValue { arg: arg.into() });
        };
        let path = parse_key(arg, key)?;
        set(
            tree,
            &path,
            parse_value(value).map_err(|()| Error::Braces { arg: arg.into() })?,
        );
    }
    Ok(())
}

/// Splits at `sep` outside braces and not escaped; escapes stay in the parts.
fn split_top_level(text: &str, sep: char) -> Result<Vec<String>, ()> {
    let mut parts = vec![String::new()];
    let mut depth = 0usize;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        let current = parts.last_mut().ok_or(())?;
        match c {
            '\\' => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            '{' => {
                depth += 1;
                current.push(c);
            }
            '}' => {
                depth = depth.checked_sub(1).ok_or(())?;
                current.push(c);
            }
            c if c == sep && depth == 0 => parts.push(String::new()),
            c => current.push(c),
        }
    }
    if depth != 0 {
        return Err(());
    }
    Ok(parts)
}

fn split_once_unescaped(text: &str, sep: char) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == sep => return Some((&text[..i], &text[i + c.len_utf8()..])),
            _ => {}
        }
    }
    None
}

fn parse_key(arg: &str, key: &str) -> Result<Vec<Segment>, Error> {
    let empty = || Error::EmptySegment {
        arg: arg.into(),
        key: key.into(),
    };
    let bad_index = || Error::BadIndex {
        arg: arg.into(),
        key: key.into(),
    };
    let mut path = Vec::new();
    let mut name = String::new();
    let mut chars = key.chars().peekable();
    // Whether the segment just ended with `]`, after which `.` or `[` must follow.
    let mut after_index = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => name.push(chars.next().unwrap_or('\\')),
            '.' => {
                if name.is_empty() && !after_index {
                    return Err(empty());
                }
                if !name.is_empty() {
                    path.push(Segment::Key(std::mem::take(&mut name)));
                }
                after_index = false;
            }
            '[' => {
                if !name.is_empty() {
                    path.push(Segment::Key(std::mem::take(&mut name)));
                } else if path.is_empty() {
                    return Err(empty());
                }
                let mut digits = String::new();
                loop {
                    match chars.next() {
                        Some(']') => break,
                        Some(d) if d.is_ascii_digit() => digits.push(d),
                        _ => return Err(bad_index()),
                    }
                }
                let index: usize = digits.parse().map_err(|_| bad_index())?;
                if index > MAX_INDEX {
                    return Err(bad_index());
                }
                path.push(Segment::Index(index));
                after_index = true;
                if chars
                    .peek()
                    .is_some_and(|next| *next != '.' && *next != '[')
                {
                    return Err(bad_index());
                }
            }
            c => name.push(c),
        }
    }
    if !name.is_empty() {
        path.push(Segment::Key(name));
    } else if !after_index {
        return Err(empty());
    }
    Ok(path)
}

/// `{a,b}` is a list; anything else a scalar.
fn parse_value(text: &str) -> Result<Value, ()> {
    if let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        if inner.is_empty() {
            return Ok(Value::Sequence(Vec::new()));
        }
        return Ok(Value::Sequence(
            split_top_level(inner, ',')?
                .iter()
                .map(|item| scalar(item))
                .collect(),
        ));
    }
    Ok(scalar(text))
}

fn scalar(text: &str) -> Value {
    let unescaped = unescape(text);
    match unescaped.as_str() {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" => Value::Null,
        // As Helm: an integer without a leading zero (so "007" stays a string).
        s if is_integer(s) => s
            .parse::<i64>()
            .map_or(Value::String(unescaped.clone()), |n| {
                Value::Number(n.into())
            }),
        _ => Value::String(unescaped),
    }
}

fn is_integer(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().unwrap_or('\\')),
            c => out.push(c),
        }
    }
    out
}

/// Sets `path` in `tree`, making maps and lists on the way; `null` removes a map key.
fn set(tree: &mut Value, path: &[Segment], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        *tree = value;
        return;
    };
    match first {
        Segment::Key(key) => {
            if !tree.is_mapping() {
                *tree = Value::Mapping(Mapping::new());
            }
            let Value::Mapping(map) = tree else { return };
            let key = Value::String(key.clone());
            if rest.is_empty() && value.is_null() {
                map.remove(&key);
                return;
            }
            let child = map.entry(key).or_insert(Value::Null);
            set(child, rest, value);
        }
        Segment::Index(index) => {
            if !tree.is_sequence() {
                *tree = Value::Sequence(Vec::new());
            }
            let Value::Sequence(items) = tree else { return };
            if items.len() <= *index {
                items.resize(index + 1, Value::Null);
            }
            if let Some(child) = items.get_mut(*index) {
                set(child, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(args: &[&str]) -> Result<Value, Error> {
        let mut tree = serde_yaml::from_str("keep: 1\nlist: [a, b]\nmap: {x: 1}\n").unwrap();
        for arg in args {
            apply(&mut tree, arg)?;
        }
        Ok(tree)
    }

    #[test]
    fn assignments_parse_as_helm_does() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["meshConfig.outboundTrafficPolicy.mode=REGISTRY_ONLY"],
                "{keep: 1, list: [a, b], map: {x: 1}, meshConfig: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}}",
            ),
            (
                &["a=true,b=false,c=42,d=-3"],
                "{keep: 1, list: [a, b], map: {x: 1}, a: true, b: false, c: 42, d: -3}",
            ),
            (
                &["a=007,b=1.5,c=", "d=x=y"],
                "{keep: 1, list: [a, b], map: {x: 1}, a: '007', b: '1.5', c: '', d: 'x=y'}",
            ),
            (&["keep=null"], "{list: [a, b], map: {x: 1}}"),
            (
                &["list[1]=z", "list[3]=w"],
                "{keep: 1, list: [a, z, null, w], map: {x: 1}}",
            ),
            (&["list={p,q,3}"], "{keep: 1, list: [p, q, 3], map: {x: 1}}"),
            (&["list={}"], "{keep: 1, list: [], map: {x: 1}}"),
            (&["map.x.y=2"], "{keep: 1, list: [a, b], map: {x: {y: 2}}}"),
            (
                &[r"nodeSelector.kubernetes\.io/arch=amd64"],
                "{keep: 1, list: [a, b], map: {x: 1}, nodeSelector: {kubernetes.io/arch: amd64}}",
            ),
            (
                &[r"a=x\,y"],
                "{keep: 1, list: [a, b], map: {x: 1}, a: 'x,y'}",
            ),
            (
                &["tolerations[0].operator=Exists"],
                "{keep: 1, list: [a, b], map: {x: 1}, tolerations: [{operator: Exists}]}",
            ),
        ];
        for (args, expected) in cases {
            let expected: Value = serde_yaml::from_str(expected).unwrap();
            assert_eq!(applied(args).unwrap(), expected, "{args:?}");
        }
    }

    #[test]
    fn malformed_assignments_are_refused() {
        let cases = [
            ("novalue", "expected KEY=VALUE"),
            ("a..b=1", "empty key segment"),
            ("=1", "empty key segment"),
            ("a.=1", "empty key segment"),
            ("a[x]=1", "bad list index"),
            ("a[1001]=1", "bad list index"),
            ("a[1]b=1", "bad list index"),
            ("a={x,y=1", "unbalanced braces"),
        ];
        for (arg, expected) in cases {
            let error = applied(&[arg]).unwrap_err().to_string();
            assert!(error.contains(expected), "{arg}: {error}");
            assert!(
                error.contains(arg),
                "{arg}: the message names the flag: {error}"
            );
        }
    }
}
