//! Every route's happy path over a real Unix socket, the socket's life (mode, stale and live
//! sockets, removal at shutdown), the TCP API's token rules, and the console upgrade.

mod api_support;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_support::*;
use vmk_api::client::{Client, ClientError};
use vmk_api::model::{ExitInfo, HostConfig, TcpApiConfig, VmState};
use vmk_host::api::{ApiError, Server};
use vmk_host::fake::{FakeHost, TestServer};

#[test]
fn socket_is_private_and_removed_at_shutdown() {
    let env = start();
    let socket = env.socket();
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Nothing is left of the temporary directory the socket was bound in.
    let entries: Vec<_> = std::fs::read_dir(socket.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("vmk.sock")]);
    env.server.stop().unwrap();
    assert!(!socket.exists(), "the socket file is removed at shutdown");
}

#[test]
fn stale_socket_is_replaced_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    std::fs::create_dir_all(cfg.socket.parent().unwrap()).unwrap();
    // A socket file nobody listens on (a host that died).
    drop(std::os::unix::net::UnixListener::bind(&cfg.socket).unwrap());
    let host: Arc<FakeHost> = Arc::new(FakeHost::default());
    let server = TestServer::start(host.clone(), &cfg).unwrap();
    Client::unix(&cfg.socket).host_info().unwrap();

    let e = Server::bind(host.clone(), &cfg)
        .err()
        .expect("a live socket is refused");
    assert!(matches!(e, ApiError::Refused(_)), "{e}");
    assert!(e.to_string().contains("already serving"), "{e}");
    // The refused attempt left the live server alone.
    Client::unix(&cfg.socket).host_info().unwrap();
    drop(server);

    // Not a socket: never deleted.
    std::fs::write(&cfg.socket, "precious").unwrap();
    let e = Server::bind(host, &cfg)
        .err()
        .expect("a regular file is refused");
    assert!(e.to_string().contains("is not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&cfg.socket).unwrap(), "precious");
}

#[test]
fn host_info_and_vm_lifecycle() {
    let env = start();
    let c = &env.client;
    let info = c.host_info().unwrap();
    assert_eq!(info.hostname, "fake");
    assert_eq!(info.vms, 0);

    // Create: 201 with the VM.
    let resp = c
        .send(
            "POST",
            "/v1/vms",
            Some((
                "application/json",
                &serde_json::to_vec(&def("web1")).unwrap(),
            )),
        )
        .unwrap();
    assert_eq!(resp.status, 201, "{}", resp.error_message());
    let vm: vmk_api::model::VmInfo = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(vm.state, VmState::Stopped);
    assert_eq!(vm.definition.memory.0, 256 << 20);
    c.create(&minimal_def("db")).unwrap();

    let names: Vec<_> = c.list().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["db", "web1"]);
    assert_eq!(c.info("web1").unwrap().definition, def("web1"));

    assert_eq!(c.start("web1").unwrap().state, VmState::Running);
    assert_eq!(c.host_info().unwrap().vms_running, 1);
    let again = c.start("web1").unwrap_err();
    assert_eq!(again.status(), Some(409), "{again}");
    assert!(again.to_string().contains("running"), "{again}");

    let reset = c.reset("web1").unwrap();
    assert_eq!((reset.state, reset.boots), (VmState::Running, 2));

    // Stop with the default timeout (no body) and with an explicit one.
    let resp = c.send("POST", "/v1/vms/web1/stop", None).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.error_message());
    wait_state(c, "web1", VmState::Stopped);
    assert_eq!(
        c.info("web1").unwrap().last_exit,
        Some(ExitInfo::PoweredOff { status: 0 })
    );
    c.start("web1").unwrap();
    assert_eq!(
        c.stop("web1", Some(Duration::from_secs(0))).unwrap().state,
        VmState::Stopping
    );
    wait_state(c, "web1", VmState::Stopped);
    assert_eq!(c.info("web1").unwrap().last_exit, Some(ExitInfo::Killed));

    c.start("web1").unwrap();
    let off = c.poweroff("web1").unwrap();
    assert_eq!(
        (off.state, off.last_exit),
        (VmState::Stopped, Some(ExitInfo::Killed))
    );

    let resp = c.send("DELETE", "/v1/vms/web1", None).unwrap();
    assert_eq!(resp.status, 204);
    assert!(resp.body.is_empty());
    let gone = c.info("web1").unwrap_err();
    assert_eq!(gone.status(), Some(404), "{gone}");
    assert!(gone.to_string().contains("does not exist"), "{gone}");
}

/// `PUT /v1/vms/{name}` over the socket: a stopped VM's definition is replaced and read
/// back; a running VM (409), a rename (400), an invalid definition (400), a missing VM (404)
/// and a body that is not JSON (415) are refused, the definition unchanged.
#[test]
fn a_stopped_vms_definition_is_replaced() {
    let env = start();
    let c = &env.client;
    c.create(&def("web1")).unwrap();
    let put = |path: &str, d: &vmk_api::model::VmDefinition| {
        c.send(
            "PUT",
            path,
            Some(("application/json", &serde_json::to_vec(d).unwrap())),
        )
        .unwrap()
    };
    let mut new = def("web1");
    new.cpus = 4;
    new.memory = vmk_api::model::ByteSize(1 << 30);
    let resp = put("/v1/vms/web1", &new);
    assert_eq!(resp.status, 200, "{}", resp.error_message());
    let vm: vmk_api::model::VmInfo = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!((vm.state, &vm.definition), (VmState::Stopped, &new));
    assert_eq!(c.info("web1").unwrap().definition, new);
    assert_eq!(
        c.update("web1", &def("web1")).unwrap().definition,
        def("web1")
    );
    c.update("web1", &new).unwrap();

    let refused = |resp: vmk_api::client::Response, status: u16, words: &[&str]| {
        assert_eq!(resp.status, status, "{}", resp.error_message());
        let m = resp.error_message();
        for w in words {
            assert!(m.contains(w), "'{m}' lacks '{w}'");
        }
        assert_eq!(c.info("web1").unwrap().definition, new);
    };
    let mut renamed = new.clone();
    renamed.name = "web2".into();
    refused(
        put("/v1/vms/web1", &renamed),
        400,
        &["cannot be renamed", "'web2'"],
    );
    assert_eq!(c.info("web2").unwrap_err().status(), Some(404));
    let mut bad = new.clone();
    bad.cpus = 0;
    refused(put("/v1/vms/web1", &bad), 400, &["cpus 0 is out of range"]);
    refused(put("/v1/vms/nope", &def("nope")), 404, &["nope"]);
    refused(
        c.send("PUT", "/v1/vms/web1", Some(("text/plain", b"cpus = 2")))
            .unwrap(),
        415,
        &[],
    );
    refused(
        c.send(
            "PUT",
            "/v1/vms/web1",
            Some(("application/json", b"{\"name\": \"web1\"}")),
        )
        .unwrap(),
        400,
        &["boot"],
    );

    c.start("web1").unwrap();
    let mut more = new.clone();
    more.cpus = 2;
    let e = c.update("web1", &more).unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(
        e.to_string().contains("running") && e.to_string().contains("stop it first"),
        "{e}"
    );
    assert_eq!(c.info("web1").unwrap().definition, new);
    assert_eq!(c.info("web1").unwrap().state, VmState::Running);
}

fn wait_state(c: &Client, name: &str, want: VmState) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = c.info(name).unwrap().state;
        if state == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed {state:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metrics_json_and_prometheus() {
    let env = start();
    let c = &env.client;
    c.create(&def("web1")).unwrap();
    c.start("web1").unwrap();
    env.host
        .work("web1", 1, 2_500_000_000, 1_000_000, (4, 16384))
        .unwrap();

    let m = c.vm_metrics("web1").unwrap();
    assert_eq!(m.vcpus.len(), 2);
    assert_eq!(m.vcpus[1].instret, 1_000_000);
    assert_eq!(m.disks[0].read_ops, 4);
    let hm = c.metrics().unwrap();
    assert_eq!(hm.vms.len(), 1);
    assert_eq!(hm.host.vms_running, 1);

    let resp = c.send("GET", "/metrics", None).unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(resp.body).unwrap();
    assert!(
        text.contains("# TYPE vmk_vm_vcpu_cpu_seconds_total counter\n"),
        "{text}"
    );
    assert!(text.contains("vmk_vm_vcpu_cpu_seconds_total{vm=\"web1\",vcpu=\"1\"} 2.5\n"));
    assert!(text.contains("vmk_vm_vcpu_instructions_total{vm=\"web1\",vcpu=\"1\"} 1000000\n"));
    assert!(text.contains("vmk_vm_memory_configured_bytes{vm=\"web1\"} 268435456\n"));
    assert!(text.contains(
        "vmk_vm_disk_read_bytes_total{vm=\"web1\",disk=\"0\",path=\"/disks/a.vmdk\"} 16384\n"
    ));
    assert!(text.contains("vmk_host_vms_running 1\n"));
    assert!(text.contains("vmk_host_resident_memory_bytes "));
    assert_eq!(c.prometheus().unwrap(), text);
}

#[test]
fn console_log_tail() {
    let env = start();
    let c = &env.client;
    c.create(&def("web1")).unwrap();
    c.start("web1").unwrap();
    env.host
        .guest_output("web1", b"line one\nline two\n")
        .unwrap();
    assert_eq!(c.console_log("web1", 9).unwrap(), b"line two\n");
    let resp = c.send("GET", "/v1/vms/web1/console/log", None).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert_eq!(resp.body, b"line one\nline two\n");
}

#[test]
fn console_upgrade_carries_bytes_both_ways() {
    let env = start();
    let c = &env.client;
    c.create(&def("web1")).unwrap();
    // Not running: a JSON 409, no upgrade.
    let e = c.console("web1").unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    c.start("web1").unwrap();
    env.host.guest_output("web1", b"login: ").unwrap();

    let (mut out, mut keys) = c.console("web1").unwrap().split().unwrap();
    let mut buf = [0u8; 64];
    let n = out.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"login: ", "history first");

    keys.write_all(b"root\r").unwrap();
    wait_for(|| env.host.guest_input("web1").unwrap() == b"root\r");

    env.host.guest_output("web1", b"# ").unwrap();
    let n = out.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"# ", "live output");

    // The run ends: the server sends what is left, then closes.
    env.host.guest_output("web1", b"bye\n").unwrap();
    env.host.guest_poweroff("web1", 3).unwrap();
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"bye\n");

    // Detaching leaves the VM alone, and what was typed just before still arrives (even
    // when the server notices the client has gone while writing to it).
    c.start("web1").unwrap();
    for round in 0..20u8 {
        let (_out, mut keys) = c.console("web1").unwrap().split().unwrap();
        keys.write_all(&[round]).unwrap();
        keys.close().unwrap();
        env.host.guest_output("web1", b"more output").unwrap();
        wait_for(|| env.host.guest_input("web1").unwrap().ends_with(&[round]));
    }
    assert_eq!(c.info("web1").unwrap().state, VmState::Running);
}

/// Without the upgrade headers the console route explains itself with 426.
#[test]
fn console_without_upgrade_is_426() {
    let env = start();
    env.client.create(&def("web1")).unwrap();
    let resp = env
        .client
        .send("GET", "/v1/vms/web1/console", None)
        .unwrap();
    assert_eq!(resp.status, 426);
    assert_eq!(resp.header("upgrade"), Some("vmk-console"));
    assert!(resp.error_message().contains("Upgrade: vmk-console"));
}

fn wait_for(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn tcp_with_token() {
    let env = start_with_tcp();
    let c = env.tcp_client();
    assert_eq!(c.host_info().unwrap().hostname, "fake");
    c.create(&def("web1")).unwrap();
    c.start("web1").unwrap();
    env.host.guest_output("web1", b"hello").unwrap();
    let (mut out, _keys) = c.console("web1").unwrap().split().unwrap();
    let mut buf = [0u8; 5];
    out.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    let wrong = Client::tcp(
        &format!("http://{}", env.server.tcp_addr().unwrap()),
        "wrong-token-0123456789",
    )
    .unwrap();
    let e = wrong.host_info().unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
}

#[test]
fn tcp_token_file_rules() {
    let dir = tempfile::tempdir().unwrap();
    let bind = |token: &str, mode: u32| {
        let cfg = HostConfig {
            tcp: Some(TcpApiConfig {
                listen: "127.0.0.1:0".into(),
                token_file: token_file(dir.path(), token, mode),
            }),
            ..config(dir.path())
        };
        Server::bind(Arc::new(FakeHost::default()), &cfg).map(|_| ())
    };
    let e = bind(TOKEN, 0o644).unwrap_err();
    assert!(e.to_string().contains("mode 644"), "{e}");
    assert!(e.to_string().contains("chmod 600"), "{e}");
    let e = bind(TOKEN, 0o640).unwrap_err();
    assert!(e.to_string().contains("group or others"), "{e}");
    let e = bind("", 0o600).unwrap_err();
    assert!(e.to_string().contains("is empty"), "{e}");
    let e = bind("short", 0o600).unwrap_err();
    assert!(e.to_string().contains("at least 16"), "{e}");
    bind(TOKEN, 0o600).unwrap();
    bind(TOKEN, 0o400).unwrap();

    let cfg = HostConfig {
        tcp: Some(TcpApiConfig {
            listen: "127.0.0.1:0".into(),
            token_file: dir.path().join("missing"),
        }),
        ..config(dir.path())
    };
    let e = Server::bind(Arc::new(FakeHost::default()), &cfg)
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("cannot read the API token file"),
        "{e}"
    );
    // A refused TCP setup leaves no socket behind.
    assert!(!cfg.socket.exists());
}

#[test]
fn client_reports_the_missing_host() {
    let dir = tempfile::tempdir().unwrap();
    let e = Client::unix(dir.path().join("none.sock"))
        .host_info()
        .unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("none.sock"), "{e}");
}

/// Neither a half-sent request nor an attached console keeps the server from stopping.
#[test]
fn shutdown_is_not_held_up_by_clients() {
    let env = start();
    env.client.create(&def("web1")).unwrap();
    env.client.start("web1").unwrap();
    let (mut out, _keys) = env.client.console("web1").unwrap().split().unwrap();
    let mut slow = std::os::unix::net::UnixStream::connect(env.socket()).unwrap();
    slow.write_all(b"GET /v1/host HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let t = Instant::now();
    env.server.stop().unwrap();
    assert!(t.elapsed() < Duration::from_secs(7), "{:?}", t.elapsed());
    // The console was closed by the server.
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
}
