//! How the binaries print an error: its whole chain, outermost first, joined by `: `, as
//! anyhow's `{:#}` does, except that a cause whose text the message already carries is not
//! repeated (many messages name their cause mid-sentence, next to the hint about it).

use std::error::Error;

/// `error` and every `source()` below it, each once.
#[must_use]
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot read the config: {source}")]
        Says { source: std::io::Error },
        #[error("cannot start")]
        Hides(#[source] std::io::Error),
    }

    #[test]
    fn every_cause_shows_once() {
        let io = || std::io::Error::other("no such file");
        let cases: [(Outer, &str); 2] = [
            (
                Outer::Says { source: io() },
                "cannot read the config: no such file",
            ),
            (Outer::Hides(io()), "cannot start: no such file"),
        ];
        for (error, expected) in cases {
            assert_eq!(chain(&error), expected);
        }
    }
}
