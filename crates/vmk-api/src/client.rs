//! A small blocking client of the REST API (served by `vmk_host::api`) over the Unix
//! socket, or over TCP with the bearer token. The `vmk` CLI uses it.
//!
//! It speaks HTTP/1.1 itself (one request per connection, `Connection: close`, responses
//! parsed with `httparse`) instead of using hyper's client: the CLI stays free of an async
//! runtime, and the console upgrade leaves a plain `UnixStream`/`TcpStream` that two
//! ordinary threads can read and write.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::model::{
    validate_name, HostError, HostInfo, HostMetrics, PowerPolicy, PowerRequest, StopRequest,
    VmDefinition, VmInfo, VmMetrics, CONSOLE_PROTOCOL,
};
use crate::network::{
    check_ifname, NetworkInfo, PortGroupDef, PortGroupInfo, PortGroupUpdate, UplinkSpec,
    VSwitchDef, VSwitchInfo, VSwitchUpdate,
};

/// How long a request may wait for its answer (no API call waits for a guest).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response head accepted.
const HEAD_LIMIT: usize = 64 << 10;
/// Largest response body accepted (the console log is capped at 16 MiB by the server).
const BODY_LIMIT: usize = 64 << 20;

/// Where the host's API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port` and the bearer token.
    Tcp {
        authority: String,
        token: String,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp { authority, .. } => write!(f, "http://{authority}"),
        }
    }
}

/// What went wrong talking to the host. `Api` carries the server's own message.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the vmk host at {endpoint}: {source}; {hint}")]
    Connect {
        endpoint: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    /// The host answered with an error.
    #[error("{message}")]
    Api { status: u16, message: String },
    /// The request was not sent: its arguments are wrong (a bad VM name, URL or token file).
    #[error("{0}")]
    Usage(String),
    #[error("talking to the vmk host at {endpoint}: {what}")]
    Protocol { endpoint: String, what: String },
}

impl ClientError {
    /// The HTTP status of an `Api` error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<HostError> for ClientError {
    fn from(e: HostError) -> ClientError {
        ClientError::Usage(e.to_string())
    }
}

/// A response as received: status, headers (names lowercased) and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The server's `{"error": ...}` message, or the body as text if it is not one.
    pub fn error_message(&self) -> String {
        #[derive(Deserialize)]
        struct ErrorBody {
            error: String,
        }
        match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(e) => e.error,
            Err(_) => format!(
                "HTTP {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body).trim()
            ),
        }
    }
}

/// One connection, Unix or TCP.
#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn shutdown(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        }
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// The API client.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
}

impl Client {
    /// A client of the host's Unix socket.
    pub fn unix(path: impl Into<PathBuf>) -> Client {
        Client {
            endpoint: Endpoint::Unix(path.into()),
        }
    }

    /// A client of the TCP API: `url` is `http://HOST:PORT` (no path), the token is the one
    /// in the host's `tcp.token_file`.
    pub fn tcp(url: &str, token: &str) -> Result<Client, ClientError> {
        let bad = |why: &str| {
            ClientError::Usage(format!(
                "bad API URL '{url}': {why} (expected http://HOST:PORT)"
            ))
        };
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// is supported (use an SSH tunnel or a TLS proxy)"))?
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(bad("it must be just a host and a port"));
        }
        let port = authority.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        if !matches!(port, Some(Ok(_))) {
            return Err(bad("it needs a port"));
        }
        let token = token.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::Usage(
                "the API token must be printable ASCII without spaces, and not empty".into(),
            ));
        }
        Ok(Client {
            endpoint: Endpoint::Tcp {
                authority: authority.to_string(),
                token: token.to_string(),
            },
        })
    }

    /// A TCP client whose token is read from `token_file`.
    pub fn tcp_with_token_file(url: &str, token_file: &Path) -> Result<Client, ClientError> {
        let token = std::fs::read_to_string(token_file).map_err(|e| {
            ClientError::Usage(format!(
                "cannot read the API token file {}: {e}",
                token_file.display()
            ))
        })?;
        Client::tcp(url, &token)
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn connect(&self) -> Result<Stream, ClientError> {
        let (stream, hint) = match &self.endpoint {
            Endpoint::Unix(p) => (
                UnixStream::connect(p).map(Stream::Unix),
                "is `vmk host start` running? (--socket or VMK_SOCKET name another socket)",
            ),
            Endpoint::Tcp { authority, .. } => (
                TcpStream::connect(authority.as_str()).map(Stream::Tcp),
                "is the host serving TCP there (`tcp.listen` in its config)?",
            ),
        };
        stream.map_err(|source| ClientError::Connect {
            endpoint: self.endpoint.to_string(),
            hint,
            source,
        })
    }

    fn protocol(&self, what: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol {
            endpoint: self.endpoint.to_string(),
            what: what.to_string(),
        }
    }

    /// Writes a request head (and body) to a new connection.
    fn open(
        &self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Result<Stream, ClientError> {
        let mut stream = self.connect()?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: vmk/{}\r\n",
            match &self.endpoint {
                Endpoint::Unix(_) => "localhost",
                Endpoint::Tcp { authority, .. } => authority,
            },
            env!("CARGO_PKG_VERSION")
        );
        if let Endpoint::Tcp { token, .. } = &self.endpoint {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some((ct, b)) = body {
            head.push_str(&format!(
                "Content-Type: {ct}\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        let sent = stream.write_all(head.as_bytes()).and_then(|()| match body {
            Some((_, b)) => stream.write_all(b),
            None => Ok(()),
        });
        match sent {
            Ok(()) => {}
            // The server may answer (413) and close before reading a large body; its
            // answer is still there to read.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => return Err(self.protocol(format!("cannot send the request: {e}"))),
        }
        Ok(stream)
    }

    /// Sends one request and returns the response, whatever its status. `body` is the
    /// content type and the bytes.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Response, ClientError> {
        let mut stream = self.open(method, path, &[("Connection", "close")], body)?;
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .map_err(|e| self.protocol(e))?;
        let (mut resp, rest) = self.read_head(&mut stream)?;
        resp.body = self.read_body(&resp, rest, stream)?;
        Ok(resp)
    }

    /// Reads the response head; returns it and the bytes read past it.
    fn read_head(&self, stream: &mut Stream) -> Result<(Response, Vec<u8>), ClientError> {
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream
                .read(&mut chunk)
                .map_err(|e| self.protocol(format!("no answer: {e}")))?;
            if n == 0 {
                return Err(self.protocol("the host closed the connection without answering"));
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let resp = Response {
                        status: parsed.code.unwrap_or(0),
                        headers: parsed
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_ascii_lowercase(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                        body: Vec::new(),
                    };
                    return Ok((resp, buf[len..].to_vec()));
                }
                Ok(httparse::Status::Partial) if buf.len() < HEAD_LIMIT => {}
                Ok(httparse::Status::Partial) => {
                    return Err(self.protocol("the answer's head is too large"))
                }
                Err(e) => return Err(self.protocol(format!("malformed answer: {e}"))),
            }
        }
    }

    fn read_body(
        &self,
        resp: &Response,
        rest: Vec<u8>,
        stream: Stream,
    ) -> Result<Vec<u8>, ClientError> {
        let mut reader = io::Cursor::new(rest).chain(stream);
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let body = if chunked {
            read_chunked(&mut BufReader::new(reader))
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len
                .trim()
                .parse()
                .map_err(|_| self.protocol(format!("bad Content-Length '{len}'")))?;
            if len > BODY_LIMIT {
                return Err(self.protocol(format!("the answer is too large ({len} bytes)")));
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).map(|()| body)
        } else {
            // `Connection: close`: the body ends with the connection.
            let mut body = Vec::new();
            reader
                .take(BODY_LIMIT as u64 + 1)
                .read_to_end(&mut body)
                .map(|_| body)
        };
        let body = body.map_err(|e| self.protocol(format!("cannot read the answer: {e}")))?;
        if body.len() > BODY_LIMIT {
            return Err(self.protocol("the answer is too large"));
        }
        Ok(body)
    }

    /// Sends a request and decodes a successful JSON answer; an error answer becomes
    /// [`ClientError::Api`] with the server's message.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<T, ClientError> {
        let resp = self.checked(method, path, body)?;
        serde_json::from_slice(&resp.body)
            .map_err(|e| self.protocol(format!("unexpected answer to {method} {path}: {e}")))
    }

    fn checked(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        let resp = self.send(method, path, body.map(|b| ("application/json", b)))?;
        if (200..300).contains(&resp.status) {
            Ok(resp)
        } else {
            Err(ClientError::Api {
                status: resp.status,
                message: resp.error_message(),
            })
        }
    }

    /// `/v1/vms/{name}{suffix}`, the name checked first so it cannot change the path.
    fn vm_path(name: &str, suffix: &str) -> Result<String, ClientError> {
        validate_name("VM", name)?;
        Ok(format!("/v1/vms/{name}{suffix}"))
    }

    pub fn host_info(&self) -> Result<HostInfo, ClientError> {
        self.call("GET", "/v1/host", None)
    }

    /// Sets the host's power policy; the answer's `cpu` says what it did.
    pub fn set_power_policy(&self, policy: PowerPolicy) -> Result<HostInfo, ClientError> {
        let body = serde_json::to_vec(&PowerRequest { policy })
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        self.call("PUT", "/v1/host/power", Some(&body))
    }

    pub fn list(&self) -> Result<Vec<VmInfo>, ClientError> {
        self.call("GET", "/v1/vms", None)
    }

    pub fn info(&self, name: &str) -> Result<VmInfo, ClientError> {
        self.call("GET", &Self::vm_path(name, "")?, None)
    }

    pub fn create(&self, def: &VmDefinition) -> Result<VmInfo, ClientError> {
        let body = serde_json::to_vec(def).map_err(|e| ClientError::Usage(e.to_string()))?;
        self.call("POST", "/v1/vms", Some(&body))
    }

    /// Replaces the definition of the stopped VM `name` (`PUT /v1/vms/{name}`); `def.name`
    /// must be `name`.
    pub fn update(&self, name: &str, def: &VmDefinition) -> Result<VmInfo, ClientError> {
        let body = serde_json::to_vec(def).map_err(|e| ClientError::Usage(e.to_string()))?;
        self.call("PUT", &Self::vm_path(name, "")?, Some(&body))
    }

    pub fn delete(&self, name: &str) -> Result<(), ClientError> {
        self.checked("DELETE", &Self::vm_path(name, "")?, None)
            .map(|_| ())
    }

    pub fn start(&self, name: &str) -> Result<VmInfo, ClientError> {
        self.call("POST", &Self::vm_path(name, "/start")?, None)
    }

    /// Asks the guest to shut down; the host powers it off after `timeout` (default 30 s).
    /// Returns at once (the VM is then `stopping`).
    pub fn stop(&self, name: &str, timeout: Option<Duration>) -> Result<VmInfo, ClientError> {
        let body = serde_json::to_vec(&StopRequest {
            timeout_secs: timeout.map(|t| t.as_secs()),
        })
        .map_err(|e| ClientError::Usage(e.to_string()))?;
        self.call("POST", &Self::vm_path(name, "/stop")?, Some(&body))
    }

    pub fn poweroff(&self, name: &str) -> Result<VmInfo, ClientError> {
        self.call("POST", &Self::vm_path(name, "/poweroff")?, None)
    }

    pub fn reset(&self, name: &str) -> Result<VmInfo, ClientError> {
        self.call("POST", &Self::vm_path(name, "/reset")?, None)
    }

    pub fn vm_metrics(&self, name: &str) -> Result<VmMetrics, ClientError> {
        self.call("GET", &Self::vm_path(name, "/metrics")?, None)
    }

    pub fn metrics(&self) -> Result<HostMetrics, ClientError> {
        self.call("GET", "/v1/metrics", None)
    }

    /// The Prometheus text of `GET /metrics`.
    pub fn prometheus(&self) -> Result<String, ClientError> {
        let resp = self.checked("GET", "/metrics", None)?;
        String::from_utf8(resp.body).map_err(|e| self.protocol(e))
    }

    /// The last `max_bytes` of the VM's console log.
    pub fn console_log(&self, name: &str, max_bytes: usize) -> Result<Vec<u8>, ClientError> {
        let path = Self::vm_path(name, &format!("/console/log?max_bytes={max_bytes}"))?;
        Ok(self.checked("GET", &path, None)?.body)
    }

    /// Attaches to the VM's serial console (the `vmk-console` upgrade).
    pub fn console(&self, name: &str) -> Result<Console, ClientError> {
        let path = Self::vm_path(name, "/console")?;
        let mut stream = self.open(
            "GET",
            &path,
            &[("Connection", "Upgrade"), ("Upgrade", CONSOLE_PROTOCOL)],
            None,
        )?;
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .map_err(|e| self.protocol(e))?;
        let (mut resp, rest) = self.read_head(&mut stream)?;
        if resp.status != 101 {
            resp.body = self.read_body(&resp, rest, stream)?;
            return Err(ClientError::Api {
                status: resp.status,
                message: resp.error_message(),
            });
        }
        // The console is quiet for as long as the guest is.
        stream
            .set_read_timeout(None)
            .map_err(|e| self.protocol(e))?;
        Ok(Console {
            stream,
            pending: rest,
        })
    }
}

/// The network (vSwitches, port groups, uplinks).
impl Client {
    fn body<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(v).map_err(|e| ClientError::Usage(e.to_string()))
    }

    pub fn network(&self) -> Result<NetworkInfo, ClientError> {
        self.call("GET", "/v1/network", None)
    }

    pub fn vswitches(&self) -> Result<Vec<VSwitchInfo>, ClientError> {
        self.call("GET", "/v1/vswitches", None)
    }

    pub fn add_vswitch(&self, def: &VSwitchDef) -> Result<VSwitchInfo, ClientError> {
        validate_name("vSwitch", &def.name)?;
        self.call("POST", "/v1/vswitches", Some(&Self::body(def)?))
    }

    pub fn update_vswitch(
        &self,
        name: &str,
        u: &VSwitchUpdate,
    ) -> Result<VSwitchInfo, ClientError> {
        validate_name("vSwitch", name)?;
        self.call(
            "PATCH",
            &format!("/v1/vswitches/{name}"),
            Some(&Self::body(u)?),
        )
    }

    pub fn remove_vswitch(&self, name: &str) -> Result<(), ClientError> {
        validate_name("vSwitch", name)?;
        self.checked("DELETE", &format!("/v1/vswitches/{name}"), None)
            .map(|_| ())
    }

    pub fn add_uplink(&self, vswitch: &str, u: &UplinkSpec) -> Result<VSwitchInfo, ClientError> {
        validate_name("vSwitch", vswitch)?;
        check_ifname(&u.name)?;
        self.call(
            "POST",
            &format!("/v1/vswitches/{vswitch}/uplinks"),
            Some(&Self::body(u)?),
        )
    }

    pub fn remove_uplink(&self, vswitch: &str, name: &str) -> Result<VSwitchInfo, ClientError> {
        validate_name("vSwitch", vswitch)?;
        check_ifname(name)?;
        self.call(
            "DELETE",
            &format!("/v1/vswitches/{vswitch}/uplinks/{name}"),
            None,
        )
    }

    pub fn portgroups(&self) -> Result<Vec<PortGroupInfo>, ClientError> {
        self.call("GET", "/v1/portgroups", None)
    }

    pub fn add_portgroup(&self, def: &PortGroupDef) -> Result<PortGroupInfo, ClientError> {
        validate_name("port group", &def.name)?;
        self.call("POST", "/v1/portgroups", Some(&Self::body(def)?))
    }

    pub fn update_portgroup(
        &self,
        name: &str,
        u: &PortGroupUpdate,
    ) -> Result<PortGroupInfo, ClientError> {
        validate_name("port group", name)?;
        self.call(
            "PATCH",
            &format!("/v1/portgroups/{name}"),
            Some(&Self::body(u)?),
        )
    }

    pub fn remove_portgroup(&self, name: &str) -> Result<(), ClientError> {
        validate_name("port group", name)?;
        self.checked("DELETE", &format!("/v1/portgroups/{name}"), None)
            .map(|_| ())
    }
}

/// Decodes a chunked body (chunk extensions and trailers ignored).
fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len().checked_add(size).is_none_or(|n| n > BODY_LIMIT) {
            return Err(bad("the answer is too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        line.clear();
        r.read_line(&mut line)?;
        if !line.trim().is_empty() {
            return Err(bad("chunk not followed by CRLF"));
        }
    }
}

/// An attached console: read it for the guest's output (history first), write to it to
/// type. Split it to do both from two threads.
#[derive(Debug)]
pub struct Console {
    stream: Stream,
    /// Output that arrived with the upgrade answer.
    pending: Vec<u8>,
}

impl Console {
    pub fn split(self) -> io::Result<(ConsoleReader, ConsoleWriter)> {
        let writer = ConsoleWriter {
            stream: self.stream.try_clone()?,
        };
        Ok((
            ConsoleReader {
                inner: io::Cursor::new(self.pending).chain(self.stream),
            },
            writer,
        ))
    }
}

/// The guest's console output; ends (EOF) when the VM's run ends or the console is closed.
#[derive(Debug)]
pub struct ConsoleReader {
    inner: io::Chain<io::Cursor<Vec<u8>>, Stream>,
}

impl Read for ConsoleReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

/// Keystrokes to the guest.
#[derive(Debug)]
pub struct ConsoleWriter {
    stream: Stream,
}

impl ConsoleWriter {
    /// Detaches: closes the connection both ways (the reader sees EOF). The VM runs on.
    pub fn close(&self) -> io::Result<()> {
        self.stream.shutdown()
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies() {
        let raw = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let body = read_chunked(&mut io::Cursor::new(&raw[..])).unwrap();
        assert_eq!(body, b"Wikipedia");
        assert!(read_chunked(&mut io::Cursor::new(&b"zz\r\n"[..])).is_err());
        assert!(read_chunked(&mut io::Cursor::new(&b"3\r\nabcX\r\n0\r\n\r\n"[..])).is_err());
    }

    #[test]
    fn urls() {
        let c = Client::tcp("http://127.0.0.1:7480/", "0123456789abcdef").unwrap();
        assert_eq!(
            c.endpoint(),
            &Endpoint::Tcp {
                authority: "127.0.0.1:7480".into(),
                token: "0123456789abcdef".into()
            }
        );
        for bad in [
            "https://h:1",
            "h:1",
            "http://h",
            "http://h:1/v1",
            "http://u@h:1",
            "http://",
        ] {
            let e = Client::tcp(bad, "tok").unwrap_err();
            assert!(e.to_string().contains("bad API URL"), "{bad}: {e}");
        }
        assert!(Client::tcp("http://h:1", " ").is_err());
        assert!(Client::tcp("http://h:1", "a b").is_err());
    }

    #[test]
    fn names_are_checked_before_sending() {
        // No server at this path: a bad name must fail before any connection is tried.
        let c = Client::unix("/nonexistent/vmk.sock");
        for bad in ["../etc", "a/b", "a?b", ""] {
            let e = c.info(bad).unwrap_err();
            assert!(matches!(e, ClientError::Usage(_)), "{bad}: {e}");
        }
        let e = c.info("fine").unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
        assert!(e.to_string().contains("vmk host start"), "{e}");
    }
}
