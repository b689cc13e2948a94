//! Request path normalization (MeshConfig `pathNormalization.normalization`), with no I/O: what
//! the proxy does to `:path` before authorization and routing, so that `/a/../admin`, `%2F`,
//! `\` or a `#fragment` cannot slip past a rule written for `/admin` (CVE-2021-31920,
//! CVE-2021-39156).
//!
//! Istio maps its modes onto Envoy's HTTP connection manager
//! (`pilot/pkg/networking/core`'s `buildHTTPConnectionManager`):
//!
//! | mode | `normalize_path` | `merge_slashes` | `path_with_escaped_slashes_action` |
//! |---|---|---|---|
//! | `NONE` | false | false | `KEEP_UNCHANGED` |
//! | `BASE` (default, and `DEFAULT`) | true | false | `KEEP_UNCHANGED` |
//! | `MERGE_SLASHES` | true | true | `KEEP_UNCHANGED` |
//! | `DECODE_AND_MERGE_SLASHES` | true | true | `UNESCAPE_AND_FORWARD` |
//!
//! and Envoy applies them in this order (`ConnectionManagerUtility::maybeNormalizePath`):
//! escaped slashes (`%2F`, `%5C`, any case) are decoded first, then the path is canonicalized
//! as RFC 3986 with Chromium's URL rules (`PathUtil::canonicalPath`), then slashes are merged.
//! The canonicalization here does what Envoy's does to the inputs that matter for access
//! control:
//! - `\` becomes `/`;
//! - percent-escapes of unreserved characters are decoded (`%2e` is `.`, `%41` is `A`); other
//!   escapes are kept exactly as written (`%2F` stays `%2F` unless decoded above, `%5c%25`
//!   stays), so nothing is decoded twice;
//! - `.` and `..` segments are resolved, never above the root; a path gets a leading `/`;
//! - an escaped NUL (`%00`) makes the path invalid: Envoy answers 400 ([`PathError::EscapedNul`]);
//! - bytes a path may not carry (space, `"`, `<`, `>`, `` ` ``, `{`, `}`, non-ASCII) are
//!   percent-escaped.
//!
//! In every mode, `NONE` included, the fragment (`#...`) is removed (Envoy strips it since
//! CVE-2021-32779) and a raw control character is refused. The query is kept as written and
//! never normalized: [`normalize`] returns `path[?query]`, what goes upstream;
//! [`path_only`] gives the part authorization matches.
#![forbid(unsafe_code)]

use std::fmt;

use serde::{Deserialize, Serialize};

/// MeshConfig `pathNormalization.normalization`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// `NONE`: the path goes to authorization and upstream as received (fragment removed).
    None,
    /// `BASE` (Istio's default, also `DEFAULT`): RFC 3986 normalization, `\` as `/`.
    #[default]
    Base,
    /// `MERGE_SLASHES`: `BASE`, then runs of `/` merged into one.
    MergeSlashes,
    /// `DECODE_AND_MERGE_SLASHES`: `%2F`/`%5C` decoded first, then `MERGE_SLASHES`.
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    /// The mode Istio names `name`; `None` for a name Istio does not have.
    #[must_use]
    pub fn from_istio(name: &str) -> Option<Self> {
        Some(match name {
            "NONE" => Self::None,
            "BASE" | "DEFAULT" => Self::Base,
            "MERGE_SLASHES" => Self::MergeSlashes,
            "DECODE_AND_MERGE_SLASHES" => Self::DecodeAndMergeSlashes,
            _ => return None,
        })
    }

    /// Istio's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Base => "BASE",
            Self::MergeSlashes => "MERGE_SLASHES",
            Self::DecodeAndMergeSlashes => "DECODE_AND_MERGE_SLASHES",
        }
    }

    fn canonicalizes(self) -> bool {
        self != Self::None
    }

    fn merges_slashes(self) -> bool {
        matches!(self, Self::MergeSlashes | Self::DecodeAndMergeSlashes)
    }

    fn decodes_slashes(self) -> bool {
        self == Self::DecodeAndMergeSlashes
    }
}

impl fmt::Display for PathNormalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A path the proxy refuses (HTTP 400, as Envoy does).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%00` in the path, under a normalizing mode: Envoy's canonicalization rejects it.
    #[error("the request path has an escaped NUL (%00), which path normalization ({mode}) rejects")]
    EscapedNul {
        /// The mode in force.
        mode: PathNormalization,
    },
    /// A raw control character (a byte below 0x20, or 0x7F).
    #[error("the request path has a raw control character (byte {byte:#04x})")]
    Control {
        /// The byte.
        byte: u8,
    },
}

/// `path_and_query` (the request target as received: origin form `/p?q`, fragment possibly
/// attached) normalized under `mode`: the path normalized, then `?query` as received; the
/// fragment removed. The asterisk form (`*`) is returned as is. See the module docs.
pub fn normalize(path_and_query: &str, mode: PathNormalization) -> Result<String, PathError> {
    let target = path_and_query
        .split_once('#')
        .map_or(path_and_query, |(before, _)| before);
    if let Some(byte) = target.bytes().find(|b| *b < 0x20 || *b == 0x7f) {
        return Err(PathError::Control { byte });
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if target == "*" || !mode.canonicalizes() {
        return Ok(target.to_owned());
    }
    let mut bytes = path.as_bytes().to_vec();
    if mode.decodes_slashes() {
        bytes = decode_slashes(&bytes);
    }
    let canonical = canonicalize(&bytes).ok_or(PathError::EscapedNul { mode })?;
    let mut out = if mode.merges_slashes() {
        merge_slashes(&canonical)
    } else {
        canonical
    };
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// The path part of a request target: before `?` (and `#`).
#[must_use]
pub fn path_only(target: &str) -> &str {
    target
        .split_once(['?', '#'])
        .map_or(target, |(path, _)| path)
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The byte `%XY` at `bytes[i..]` stands for, if it is a well-formed escape.
fn escaped(bytes: &[u8], i: usize) -> Option<u8> {
    match bytes.get(i..i + 3) {
        Some([b'%', hi, lo]) => Some((hex(*hi)? << 4) | hex(*lo)?),
        _ => None,
    }
}

/// Envoy's `UNESCAPE_AND_FORWARD`: `%2F` → `/`, `%5C` → `\`, any case, in one pass.
fn decode_slashes(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match escaped(bytes, i) {
            Some(decoded @ (b'/' | b'\\')) => {
                out.push(decoded);
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

fn unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Bytes a canonical path carries escaped.
fn must_escape(byte: u8) -> bool {
    byte >= 0x80 || matches!(byte, b' ' | b'"' | b'<' | b'>' | b'`' | b'{' | b'}')
}

/// RFC 3986 normalization as Envoy's canonicalization does it; `None` for an escaped NUL.
fn canonicalize(bytes: &[u8]) -> Option<String> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // First character by character: `\` as `/`, unreserved escapes decoded, others kept.
    let mut flat = String::with_capacity(bytes.len() + 1);
    if bytes.first() != Some(&b'/') && bytes.first() != Some(&b'\\') {
        flat.push('/');
    }
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if let Some(decoded) = escaped(bytes, i) {
            if decoded == 0 {
                return None;
            }
            if unreserved(decoded) {
                flat.push(char::from(decoded));
            } else {
                // Kept as written, case included (`%2f` is not rewritten as `%2F`).
                flat.extend(bytes[i..i + 3].iter().copied().map(char::from));
            }
            i += 3;
            continue;
        }
        if byte == b'\\' {
            flat.push('/');
        } else if must_escape(byte) {
            flat.push('%');
            flat.push(char::from(HEX[usize::from(byte >> 4)]));
            flat.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            flat.push(char::from(byte));
        }
        i += 1;
    }
    // Then the dot segments (RFC 3986 5.2.4), over the path's segments after its leading `/`.
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = flat[1..].split('/').collect();
    let last = segments.len() - 1;
    for (index, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {}
            ".." => {
                kept.pop();
            }
            other => {
                kept.push(other);
                continue;
            }
        }
        // A final `.` or `..` leaves the path ending in `/`.
        if index == last {
            kept.push("");
        }
    }
    let mut out = String::with_capacity(flat.len());
    out.push('/');
    out.push_str(&kept.join("/"));
    Some(out)
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::PathNormalization::{
        Base, DecodeAndMergeSlashes as Decode, MergeSlashes, None as Keep,
    };
    use super::*;

    /// The input; then what each mode makes of it, `Err` for a 400: NONE, BASE,
    /// MERGE_SLASHES, DECODE_AND_MERGE_SLASHES.
    type Case = (&'static str, [Result<&'static str, ()>; 4]);

    #[test]
    fn every_mode_over_the_classic_bypass_inputs() {
        let cases: [Case; 31] = [
            ("/admin", [Ok("/admin"); 4]),
            ("/x/y/z", [Ok("/x/y/z"); 4]),
            // Dot segments (CVE-2021-31920's family).
            (
                "/a/../admin",
                [Ok("/a/../admin"), Ok("/admin"), Ok("/admin"), Ok("/admin")],
            ),
            (
                "/./admin",
                [Ok("/./admin"), Ok("/admin"), Ok("/admin"), Ok("/admin")],
            ),
            (
                "/public/../../admin",
                [
                    Ok("/public/../../admin"),
                    Ok("/admin"),
                    Ok("/admin"),
                    Ok("/admin"),
                ],
            ),
            (
                "/a/b/%2E%2E/c",
                [Ok("/a/b/%2E%2E/c"), Ok("/a/c"), Ok("/a/c"), Ok("/a/c")],
            ),
            (
                "/a/b/%2e./c",
                [Ok("/a/b/%2e./c"), Ok("/a/c"), Ok("/a/c"), Ok("/a/c")],
            ),
            (
                "/a/b/.",
                [Ok("/a/b/."), Ok("/a/b/"), Ok("/a/b/"), Ok("/a/b/")],
            ),
            ("/a/..", [Ok("/a/.."), Ok("/"), Ok("/"), Ok("/")]),
            ("..", [Ok(".."), Ok("/"), Ok("/"), Ok("/")]),
            (
                "a/b/../c",
                [Ok("a/b/../c"), Ok("/a/c"), Ok("/a/c"), Ok("/a/c")],
            ),
            // Double slashes: only the merging modes merge them.
            (
                "//admin",
                [Ok("//admin"), Ok("//admin"), Ok("/admin"), Ok("/admin")],
            ),
            (
                "/a//b///c/",
                [
                    Ok("/a//b///c/"),
                    Ok("/a//b///c/"),
                    Ok("/a/b/c/"),
                    Ok("/a/b/c/"),
                ],
            ),
            (
                "/a//b/../c",
                [Ok("/a//b/../c"), Ok("/a//c"), Ok("/a/c"), Ok("/a/c")],
            ),
            // Backslashes: `\` is `/` once normalized; `%5C` only under DECODE.
            (
                "/a\\..\\admin",
                [
                    Ok("/a\\..\\admin"),
                    Ok("/admin"),
                    Ok("/admin"),
                    Ok("/admin"),
                ],
            ),
            (
                "\\admin",
                [Ok("\\admin"), Ok("/admin"), Ok("/admin"), Ok("/admin")],
            ),
            (
                "/a%5c..%5cadmin",
                [
                    Ok("/a%5c..%5cadmin"),
                    Ok("/a%5c..%5cadmin"),
                    Ok("/a%5c..%5cadmin"),
                    Ok("/admin"),
                ],
            ),
            (
                "/%5c%25",
                [Ok("/%5c%25"), Ok("/%5c%25"), Ok("/%5c%25"), Ok("/%25")],
            ),
            // Escaped slashes (CVE-2021-39156's family is the fragment, below).
            (
                "/admin%2Fsecret",
                [
                    Ok("/admin%2Fsecret"),
                    Ok("/admin%2Fsecret"),
                    Ok("/admin%2Fsecret"),
                    Ok("/admin/secret"),
                ],
            ),
            (
                "/a/%2F%2f/c",
                [
                    Ok("/a/%2F%2f/c"),
                    Ok("/a/%2F%2f/c"),
                    Ok("/a/%2F%2f/c"),
                    Ok("/a/c"),
                ],
            ),
            (
                "/public/..%2Fadmin",
                [
                    Ok("/public/..%2Fadmin"),
                    Ok("/public/..%2Fadmin"),
                    Ok("/public/..%2Fadmin"),
                    Ok("/admin"),
                ],
            ),
            // Never decoded twice.
            (
                "/a%252Fb",
                [
                    Ok("/a%252Fb"),
                    Ok("/a%252Fb"),
                    Ok("/a%252Fb"),
                    Ok("/a%252Fb"),
                ],
            ),
            // Unreserved escapes decoded, others kept as written.
            (
                "/%61dmin",
                [Ok("/%61dmin"), Ok("/admin"), Ok("/admin"), Ok("/admin")],
            ),
            (
                "/%c0%af",
                [Ok("/%c0%af"), Ok("/%c0%af"), Ok("/%c0%af"), Ok("/%c0%af")],
            ),
            ("/A/B/C", [Ok("/A/B/C"); 4]),
            // The fragment goes in every mode.
            (
                "/admin#frag",
                [Ok("/admin"), Ok("/admin"), Ok("/admin"), Ok("/admin")],
            ),
            (
                "/public#/../admin",
                [Ok("/public"), Ok("/public"), Ok("/public"), Ok("/public")],
            ),
            // The query is kept as written, and never normalized.
            (
                "//a/../b?x=//y/../z#f",
                [
                    Ok("//a/../b?x=//y/../z"),
                    Ok("//b?x=//y/../z"),
                    Ok("/b?x=//y/../z"),
                    Ok("/b?x=//y/../z"),
                ],
            ),
            // An escaped NUL is a 400 once the path is normalized.
            ("/admin%00", [Ok("/admin%00"), Err(()), Err(()), Err(())]),
            (
                "/xyz/%00.%00./abc",
                [Ok("/xyz/%00.%00./abc"), Err(()), Err(()), Err(())],
            ),
            (
                "/xyz/AAAAA%%0000/abc",
                [Ok("/xyz/AAAAA%%0000/abc"), Err(()), Err(()), Err(())],
            ),
        ];
        for (input, expected) in cases {
            for (mode, expected) in [Keep, Base, MergeSlashes, Decode].into_iter().zip(expected) {
                assert_eq!(
                    normalize(input, mode).as_deref().map_err(|_| ()),
                    expected,
                    "{input:?} under {mode}"
                );
            }
        }
    }

    #[test]
    fn raw_control_characters_and_unsafe_bytes() {
        for mode in [Keep, Base, MergeSlashes, Decode] {
            assert_eq!(
                normalize("/a\u{0}b", mode),
                Err(PathError::Control { byte: 0 }),
                "{mode}"
            );
            assert_eq!(
                normalize("/a\tb", mode),
                Err(PathError::Control { byte: 9 }),
                "{mode}"
            );
            assert_eq!(normalize("*", mode).as_deref(), Ok("*"), "{mode}");
        }
        assert_eq!(
            normalize("/a b\"<é>", Base).as_deref(),
            Ok("/a%20b%22%3C%C3%A9%3E")
        );
        assert_eq!(normalize("", Base).as_deref(), Ok("/"));
        assert_eq!(normalize("?q", Base).as_deref(), Ok("/?q"));
        assert_eq!(
            normalize("/admin%00", Decode).unwrap_err().to_string(),
            "the request path has an escaped NUL (%00), which path normalization \
             (DECODE_AND_MERGE_SLASHES) rejects"
        );
    }

    #[test]
    fn path_only_drops_query_and_fragment() {
        for (target, path) in [
            ("/a?b", "/a"),
            ("/a#b?c", "/a"),
            ("/a", "/a"),
            ("/a?b#c", "/a"),
            ("", ""),
        ] {
            assert_eq!(path_only(target), path, "{target:?}");
        }
    }

    #[test]
    fn istio_names() {
        for (name, mode) in [
            ("NONE", Some(Keep)),
            ("BASE", Some(Base)),
            ("DEFAULT", Some(Base)),
            ("MERGE_SLASHES", Some(MergeSlashes)),
            ("DECODE_AND_MERGE_SLASHES", Some(Decode)),
            ("base", None),
            ("", None),
        ] {
            assert_eq!(PathNormalization::from_istio(name), mode, "{name:?}");
        }
        assert_eq!(PathNormalization::default(), Base);
    }
}
