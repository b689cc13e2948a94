//! Just enough HTTP/1.1 to ask the agent's admin socket and the proxy's metrics endpoint:
//! one request per connection (`Connection: close`), body by Content-Length, chunks or EOF.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bound on every request: connect, write and each read.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("{method} {path} on {target}: {source}")]
    Io {
        method: String,
        path: String,
        target: String,
        source: std::io::Error,
    },
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    #[error("{method} {path} on {target} answered {status}: {body}")]
    Status {
        method: String,
        path: String,
        target: String,
        status: u16,
        body: String,
    },
}

/// A response: status and body (headers are only needed to frame the body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Where a request goes.
#[derive(Clone, Debug)]
pub enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// Sends one request and returns the response, whatever its status.
pub fn request(target: &Target, method: &str, path: &str) -> Result<Response, Error> {
    let connect_error = |source| Error::Connect {
        target: target.to_string(),
        source,
    };
    let io_error = |source| Error::Io {
        method: method.to_owned(),
        path: path.to_owned(),
        target: target.to_string(),
        source,
    };
    let raw = match target {
        Target::Unix(socket) => {
            let stream = UnixStream::connect(socket).map_err(connect_error)?;
            stream
                .set_read_timeout(Some(REQUEST_TIMEOUT))
                .map_err(io_error)?;
            stream
                .set_write_timeout(Some(REQUEST_TIMEOUT))
                .map_err(io_error)?;
            exchange(stream, method, path).map_err(io_error)?
        }
        Target::Tcp(addr) => {
            let stream =
                TcpStream::connect_timeout(addr, REQUEST_TIMEOUT).map_err(connect_error)?;
            stream
                .set_read_timeout(Some(REQUEST_TIMEOUT))
                .map_err(io_error)?;
            stream
                .set_write_timeout(Some(REQUEST_TIMEOUT))
                .map_err(io_error)?;
            exchange(stream, method, path).map_err(io_error)?
        }
    };
    parse_response(&raw)
}

/// Like [`request`], but a non-2xx status is an error carrying the body.
pub fn request_ok(target: &Target, method: &str, path: &str) -> Result<Response, Error> {
    let response = request(target, method, path)?;
    if (200..300).contains(&response.status) {
        Ok(response)
    } else {
        Err(Error::Status {
            method: method.to_owned(),
            path: path.to_owned(),
            target: target.to_string(),
            status: response.status,
            body: response.text(),
        })
    }
}

/// `GET path` over a Unix socket, 2xx only.
pub fn get_unix(socket: &Path, path: &str) -> Result<Response, Error> {
    request_ok(&Target::Unix(socket.to_path_buf()), "GET", path)
}

/// `GET path` over TCP, 2xx only.
pub fn get_tcp(addr: SocketAddr, path: &str) -> Result<Response, Error> {
    request_ok(&Target::Tcp(addr), "GET", path)
}

fn exchange(mut stream: impl Read + Write, method: &str, path: &str) -> std::io::Result<Vec<u8>> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    Ok(raw)
}

/// Parses a whole response as read until the server closed.
pub fn parse_response(raw: &[u8]) -> Result<Response, Error> {
    let head_end = find(raw, b"\r\n\r\n")
        .ok_or_else(|| Error::Malformed(format!("no end of headers in {} bytes", raw.len())))?;
    let head = std::str::from_utf8(&raw[..head_end])
        .map_err(|_| Error::Malformed("headers are not UTF-8".to_owned()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| Error::Malformed(format!("bad status line {status_line:?}")))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Error::Malformed(format!("bad header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| Error::Malformed(format!("bad Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let rest = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(length) = content_length {
        rest.get(..length)
            .ok_or_else(|| Error::Malformed(format!("body has {} of {length} bytes", rest.len())))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, Error> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n")
            .ok_or_else(|| Error::Malformed("chunk size line without CRLF".to_owned()))?;
        let size_text = std::str::from_utf8(&rest[..line_end]).unwrap_or("");
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| Error::Malformed(format!("bad chunk size {size_text:?}")))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest
            .get(..size)
            .ok_or_else(|| Error::Malformed(format!("chunk of {size} bytes is cut short")))?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raw response, and the status and body it parses to (`None`: rejected).
    type Case = (&'static [u8], Option<(u16, &'static [u8])>);

    #[test]
    fn parses_framings() {
        let cases: [Case; 6] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                Some((200, b"hello")),
            ),
            (
                b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n\r\n{\"error\":\"x\"}",
                Some((404, b"{\"error\":\"x\"}")),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
                Some((200, b"abcde")),
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", None),
            (b"garbage\r\n\r\n", None),
            (b"HTTP/1.1 200 OK\r\n", None),
        ];
        for (raw, want) in cases {
            let got = parse_response(raw).ok().map(|r| (r.status, r.body));
            assert_eq!(
                got,
                want.map(|(s, b)| (s, b.to_vec())),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn talks_to_a_unix_socket_server() {
        let dir = std::env::temp_dir().join(format!("shunt-http-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("admin.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            for status in ["200 OK", "500 Internal Server Error"] {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") {
                    stream.read_exact(&mut byte).unwrap();
                    request.push(byte[0]);
                }
                assert!(request.starts_with(b"GET /status HTTP/1.1\r\n"));
                write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\n{{}}").unwrap();
            }
        });
        assert_eq!(get_unix(&socket, "/status").unwrap().body, b"{}");
        let err = get_unix(&socket, "/status").unwrap_err();
        assert!(matches!(err, Error::Status { status: 500, .. }), "{err}");
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
