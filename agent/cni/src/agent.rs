//! Asking the agent over its `cni.sock` (`shunt_api::cni`).

use std::os::unix::net::UnixStream;
use std::time::Duration;

use shunt_api::cni::{self as wire, CniAnswer, CniRequest};

use crate::spec::{CniError, PluginConfig, codes};

/// Beyond the agent's own wait: the answer's trip back.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// Sends `request`, waits for the answer (bounded by the request's timeout).
pub fn ask(config: &PluginConfig, request: &CniRequest) -> Result<CniAnswer, CniError> {
    let socket = &config.agent_socket;
    let unreachable = |e: std::io::Error| {
        CniError::new(
            codes::TRY_AGAIN,
            format!(
                "cannot reach shunt-agent at {} ({e}); the pod must not start uncaptured, so \
                 this fails until the agent runs (is the shunt-agent DaemonSet up on this node?)",
                socket.display()
            ),
        )
    };
    let stream = UnixStream::connect(socket).map_err(unreachable)?;
    let wait = Duration::from_millis(request.timeout_ms) + ANSWER_MARGIN;
    stream
        .set_read_timeout(Some(wait))
        .and_then(|()| stream.set_write_timeout(Some(ANSWER_MARGIN)))
        .map_err(unreachable)?;
    let talk_error = |e: wire::Error| {
        CniError::new(
            codes::TRY_AGAIN,
            format!("talking to shunt-agent at {}: {e}", socket.display()),
        )
    };
    wire::write_line(&stream, "request", request).map_err(talk_error)?;
    wire::read_line(&stream, "answer").map_err(talk_error)
}
