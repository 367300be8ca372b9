//! Shared by the API test files: a fake host served on a Unix socket (and optionally TCP)
//! in a temporary directory, and raw-socket helpers for requests no client would send.

#![allow(dead_code)] // Each test file uses a different part of this module.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmk_api::client::Client;
use vmk_api::model::{Boot, HostConfig, TcpApiConfig, VmDefinition};
use vmk_host::fake::{FakeHost, TestServer};

pub const TOKEN: &str = "s3cret-token-0123456789";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub host: Arc<FakeHost>,
    pub server: TestServer,
    pub client: Client,
}

impl Env {
    pub fn socket(&self) -> PathBuf {
        self.server.socket().to_path_buf()
    }

    /// A client of the TCP API with the right token.
    pub fn tcp_client(&self) -> Client {
        let addr = self.server.tcp_addr().expect("the TCP API is on");
        Client::tcp(&format!("http://{addr}"), TOKEN).unwrap()
    }
}

pub fn config(dir: &Path) -> HostConfig {
    HostConfig {
        dir: dir.join("inventory"),
        // A directory that does not exist yet: the server creates it.
        socket: dir.join("run/vmk/vmk.sock"),
        tcp: None,
        ..HostConfig::default()
    }
}

/// The fake host served on a Unix socket only.
pub fn start() -> Env {
    start_with(false, vmk_host::api::BODY_READ_TIMEOUT)
}

/// The fake host served on a Unix socket and on 127.0.0.1 (a free port) with [`TOKEN`].
pub fn start_with_tcp() -> Env {
    start_with(true, vmk_host::api::BODY_READ_TIMEOUT)
}

/// The fake host on a Unix socket and TCP, with `body_timeout` for request bodies.
pub fn start_with_body_timeout(body_timeout: std::time::Duration) -> Env {
    start_with(true, body_timeout)
}

fn start_with(tcp: bool, body_timeout: std::time::Duration) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    if tcp {
        cfg.tcp = Some(TcpApiConfig {
            listen: "127.0.0.1:0".into(),
            token_file: token_file(dir.path(), TOKEN, 0o600),
        });
    }
    let host = Arc::new(FakeHost::default());
    let server = TestServer::start_with_body_timeout(host.clone(), &cfg, body_timeout).unwrap();
    let client = Client::unix(server.socket());
    Env {
        dir,
        host,
        server,
        client,
    }
}

pub fn token_file(dir: &Path, token: &str, mode: u32) -> PathBuf {
    let p = dir.join("token");
    std::fs::write(&p, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

pub fn def(name: &str) -> VmDefinition {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "cpus": 2,
        "memory": "256M",
        "boot": {"image": "/images/default"},
        "disk": [{"path": "/disks/a.vmdk"}],
    }))
    .unwrap()
}

pub fn minimal_def(name: &str) -> VmDefinition {
    VmDefinition {
        name: name.into(),
        cpus: 1,
        memory: vmk_api::model::ByteSize(64 << 20),
        autostart: false,
        boot: Boot {
            kernel: Some("/k".into()),
            ..Boot::default()
        },
        disks: vec![],
        nics: vec![],
        resources: Default::default(),
        test_fault_on_console: None,
    }
}

/// A raw exchange: writes `request` to a new connection, returns everything the server
/// sends until it closes (a write error after the server answered early is ignored).
pub fn raw(stream: &mut (impl Read + Write), request: &[u8]) -> String {
    let _ = stream.write_all(request);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

pub fn raw_unix(socket: &Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    raw(&mut s, request)
}

/// The status code of a raw response.
pub fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {resp:?}"))
}

/// The `error` of a raw JSON error response (asserting that it is one).
pub fn error_of(resp: &str) -> String {
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_else(|| panic!("no body in {resp:?}"));
    assert!(
        resp.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{resp}"
    );
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {resp}"));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {resp}"))
        .to_string()
}
