//! The proxy's access log: one JSON object per proxied connection, on its stdout.
#![forbid(unsafe_code)]

use std::path::Path;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not read the access log {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("access log line {line} is not a JSON object: {text:?}")]
    NotJson { line: usize, text: String },
}

/// Every entry logged so far.
#[derive(Clone, Debug, Default)]
pub struct AccessLog {
    pub entries: Vec<Value>,
}

impl AccessLog {
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses JSON lines. A last line without its newline may still be being written and is
    /// left for the next read.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        let mut entries = Vec::new();
        for (index, line) in complete.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(entry @ Value::Object(_)) => entries.push(entry),
                _ => {
                    return Err(Error::NotJson {
                        line: index + 1,
                        text: line.to_owned(),
                    });
                }
            }
        }
        Ok(Self { entries })
    }

    /// Entries whose fields equal every `(field, value)` pair (numbers compare by their text).
    #[must_use]
    pub fn matching(&self, fields: &[(&str, &str)]) -> Vec<&Value> {
        self.entries
            .iter()
            .filter(|entry| {
                fields
                    .iter()
                    .all(|(k, v)| field_text(entry, k).as_deref() == Some(*v))
            })
            .collect()
    }

    /// The entries, one per line, for assertion messages.
    #[must_use]
    pub fn describe(&self) -> String {
        if self.entries.is_empty() {
            return "access log is empty".to_owned();
        }
        self.entries
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A field as text: strings as they are, other scalars as JSON.
#[must_use]
pub fn field_text(entry: &Value, field: &str) -> Option<String> {
    match entry.get(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_filters() {
        let text = concat!(
            r#"{"direction":"outbound","src_workload":"a","bytes_sent":5}"#,
            "\n",
            r#"{"direction":"inbound","src_workload":"a","bytes_sent":5}"#,
            "\n",
            r#"{"direction":"inbound","src_w"#,
        );
        let log = AccessLog::parse(text).unwrap();
        assert_eq!(log.entries.len(), 2);
        let cases: [(&[(&str, &str)], usize); 4] = [
            (&[("direction", "outbound")], 1),
            (&[("src_workload", "a"), ("bytes_sent", "5")], 2),
            (&[("direction", "inbound"), ("bytes_sent", "6")], 0),
            (&[("missing", "x")], 0),
        ];
        for (fields, want) in cases {
            assert_eq!(log.matching(fields).len(), want, "{fields:?}");
        }
        assert!(AccessLog::parse("not json\n").is_err());
    }
}
