//! The CNI plugin ↔ agent protocol on `<run-dir>/cni.sock`: `shunt-cni` (run by the
//! container runtime for every pod sandbox) asks the agent about one pod and waits for the
//! answer.
//!
//! One request per connection, one answer: each a JSON object on one line. The socket is its
//! own (not a route of `admin.sock`) so that an `ADD` held open until the pod is captured
//! never queues behind, or beside, `shuntctl`, and so that the plugin's only reach into the
//! agent is these three questions.

use std::io::{self, BufRead as _};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The largest request or answer line read, newline included.
pub const MAX_LINE: usize = 64 * 1024;
/// The longest an agent waits for a pod to be captured, whatever the plugin asks.
pub const MAX_WAIT_MS: u64 = 120_000;

/// The CNI command the runtime ran the plugin with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CniCommand {
    /// A new sandbox: the plugin returns only once the pod is captured (or is not to be).
    Add,
    /// The sandbox is going: the agent forgets its netns.
    Del,
    /// Is the sandbox still as ADD left it?
    Check,
}

/// The pod a sandbox belongs to, from `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
/// `K8S_POD_UID` when the runtime passes it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniPod {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl std::fmt::Display for CniPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if let Some(uid) = &self.uid {
            write!(f, " (uid {uid})")?;
        }
        Ok(())
    }
}

/// What the plugin asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniRequest {
    pub command: CniCommand,
    /// `CNI_CONTAINERID`: the sandbox.
    pub container_id: String,
    /// `CNI_NETNS`, as the runtime (and so the node) names it; DEL may come without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    pub pod: CniPod,
    /// The IPv4 addresses of `prevResult` (what the primary CNI gave the pod): a pod's
    /// `status.podIP` is set only after ADD returns, so these are how the agent learns it.
    #[serde(default)]
    pub ips: Vec<Ipv4Addr>,
    /// How long the plugin waits for the answer to an ADD (capped at [`MAX_WAIT_MS`]).
    pub timeout_ms: u64,
}

/// What the agent answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum CniAnswer {
    /// The pod is captured in this netns: the proxy listens there and capture is on.
    Captured { detail: String },
    /// The pod is not captured (`reason` is its capture decision); the sandbox goes on as
    /// the primary CNI made it.
    NotCaptured { reason: String },
    /// DEL: the agent forgot the netns (or never knew it).
    Forgotten,
    /// The pod should be captured and is not (yet): the command must fail.
    Failed { error: String },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the {what}: {source}")]
    Read {
        what: &'static str,
        source: io::Error,
    },
    #[error("writing the {what}: {source}")]
    Write {
        what: &'static str,
        source: io::Error,
    },
    #[error("the {what} ended before a full line")]
    Truncated { what: &'static str },
    #[error("the {what} is longer than {MAX_LINE} bytes")]
    TooLong { what: &'static str },
    #[error("the {what} is not valid JSON of this protocol: {source}")]
    Decode {
        what: &'static str,
        source: serde_json::Error,
    },
}

/// Writes `message` as one line.
pub fn write_line<T: Serialize>(
    mut to: impl io::Write,
    what: &'static str,
    message: &T,
) -> Result<(), Error> {
    let mut line = serde_json::to_vec(message).map_err(|source| Error::Decode { what, source })?;
    line.push(b'\n');
    to.write_all(&line)
        .and_then(|()| to.flush())
        .map_err(|source| Error::Write { what, source })
}

/// Reads one line (at most [`MAX_LINE`] bytes) and decodes it.
pub fn read_line<T: serde::de::DeserializeOwned>(
    from: impl io::Read,
    what: &'static str,
) -> Result<T, Error> {
    let mut reader = io::BufReader::new(from.take(MAX_LINE as u64));
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .map_err(|source| Error::Read { what, source })?;
    decode_line(&line, what)
}

/// Decodes one line read elsewhere (the agent reads with tokio).
pub fn decode_line<T: serde::de::DeserializeOwned>(
    line: &[u8],
    what: &'static str,
) -> Result<T, Error> {
    match line.strip_suffix(b"\n") {
        Some(body) => serde_json::from_slice(body).map_err(|source| Error::Decode { what, source }),
        None if line.len() >= MAX_LINE => Err(Error::TooLong { what }),
        None => Err(Error::Truncated { what }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_json_line_each() {
        let request = CniRequest {
            command: CniCommand::Add,
            container_id: "abc".into(),
            netns: Some("/var/run/netns/cni-1".into()),
            pod: CniPod {
                namespace: "shop".into(),
                name: "web".into(),
                uid: Some("0b0c".into()),
            },
            ips: vec![Ipv4Addr::new(10, 0, 0, 5)],
            timeout_ms: 1000,
        };
        let mut wire = Vec::new();
        write_line(&mut wire, "request", &request).unwrap();
        assert_eq!(wire.iter().filter(|b| **b == b'\n').count(), 1);
        assert!(String::from_utf8_lossy(&wire).contains("\"command\":\"ADD\""));
        let back: CniRequest = read_line(wire.as_slice(), "request").unwrap();
        assert_eq!(back, request);

        let answers = [
            CniAnswer::Captured { detail: "x".into() },
            CniAnswer::NotCaptured { reason: "y".into() },
            CniAnswer::Forgotten,
            CniAnswer::Failed { error: "z".into() },
        ];
        for answer in answers {
            let mut wire = Vec::new();
            write_line(&mut wire, "answer", &answer).unwrap();
            assert_eq!(
                read_line::<CniAnswer>(wire.as_slice(), "answer").unwrap(),
                answer
            );
        }
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"{\"command\":\"ADD\"", "ended before a full line"),
            (b"", "ended before a full line"),
            (b"not json\n", "not valid JSON"),
        ];
        for (line, want) in cases {
            let e = read_line::<CniRequest>(*line, "request").unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
        let long = vec![b' '; MAX_LINE + 10];
        let e = read_line::<CniRequest>(long.as_slice(), "request").unwrap_err();
        assert!(matches!(e, Error::TooLong { .. }), "{e}");
    }
}
