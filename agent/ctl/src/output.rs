//! How a command's answer is printed: as the JSON it came as, or rendered for people.

use anyhow::Context as _;
use serde::de::DeserializeOwned;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `-o` as given: `table` and `json` for every command; `compact` (one line a flow) is
/// `flows`' own and its default, and the others print their table for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFlag {
    Table,
    Json,
    Compact,
}

impl OutputFlag {
    /// What every command but `flows` prints: a table unless `json`.
    #[must_use]
    pub fn plain(flag: Option<Self>) -> Output {
        match flag {
            Some(Self::Json) => Output::Json,
            _ => Output::Table,
        }
    }
}

impl Output {
    /// `body` pretty-printed, or decoded as `T` (from `path`, for the error) and rendered.
    pub fn show<T: DeserializeOwned>(
        self,
        body: serde_json::Value,
        path: &str,
        render: impl FnOnce(T) -> String,
    ) -> anyhow::Result<String> {
        match self {
            Self::Json => Ok(json(&body)),
            Self::Table => {
                let answer = serde_json::from_value(body)
                    .with_context(|| format!("unexpected answer from {path}"))?;
                Ok(render(answer))
            }
        }
    }
}

/// `--output json`: the body as it came, pretty-printed.
pub fn json(body: &serde_json::Value) -> String {
    format!("{body:#}\n")
}
