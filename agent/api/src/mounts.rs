//! /proc/mounts, parsed: where the agent finds bpffs and cgroup2, and what `shuntctl
//! precheck` reports of a node. Pure, so both sides read mounts the same way.

use std::path::PathBuf;

/// One line of /proc/mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
}

/// Parses /proc/mounts text. Mount points escape space, tab, newline and backslash as octal
/// (`\040`); malformed lines are skipped, since the kernel never writes them.
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let _source = fields.next()?;
            let mount_point = unescape_octal(fields.next()?);
            let fs_type = fields.next()?.to_owned();
            Some(MountEntry {
                mount_point: PathBuf::from(mount_point),
                fs_type,
            })
        })
        .collect()
}

fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes.get(i) == Some(&b'\\'))
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.extend(bytes.get(i));
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal_and_keeps_the_rest() {
        let cases = [
            ("/a\\040b", "/a b"),
            ("/tab\\011x", "/tab\tx"),
            ("/back\\134slash", "/back\\slash"),
            ("/trailing\\04", "/trailing\\04"),
            ("/not\\999octal", "/not\\999octal"),
            ("/plain", "/plain"),
        ];
        for (raw, expected) in cases {
            assert_eq!(unescape_octal(raw), expected, "{raw}");
        }
    }

    #[test]
    fn skips_malformed_lines() {
        assert_eq!(parse_mounts("only-one-field\n\n").len(), 0);
    }
}
