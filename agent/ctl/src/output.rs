//! How a command's answer is printed: as the JSON it came as, or rendered for people.

use anyhow::Context as _;
use serde::de::DeserializeOwned;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
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
