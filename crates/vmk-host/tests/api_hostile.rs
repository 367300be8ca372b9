//! Malformed and hostile requests: each gets a clean 4xx JSON answer with a precise
//! message, nothing odd reaches the host, and the server stays healthy afterwards.

mod api_support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use api_support::*;
use vmk_api::client::{Client, Response};
use vmk_api::model::VmState;

const JSON: &str = "application/json";

fn post(c: &Client, path: &str, ct: &str, body: &[u8]) -> Response {
    c.send("POST", path, Some((ct, body))).unwrap()
}

/// Asserts a JSON error with `status` whose message contains `needle`.
fn expect(resp: &Response, status: u16, needle: &str, what: &str) {
    assert_eq!(
        resp.status,
        status,
        "{what}: {} {}",
        resp.status,
        resp.error_message()
    );
    assert_eq!(resp.header("content-type"), Some(JSON), "{what}");
    let v: serde_json::Value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e})"));
    let msg = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error"));
    assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
}

fn healthy(c: &Client) {
    let resp = c.send("GET", "/v1/host", None).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.error_message());
}

#[test]
fn bad_json_bodies() {
    let env = start();
    let c = &env.client;
    let cases: &[(&str, &str)] = &[
        (r#"{"name": "#, "EOF while parsing"),
        ("not json", "expected ident"),
        ("[1, 2]", "the request body must be a JSON object"),
        (
            r#"{"name": 5, "boot": {}}"#,
            "name: invalid type: integer `5`, expected a string",
        ),
        (
            r#"{"name": "a", "cpus": "two", "boot": {"image": "/i"}}"#,
            "cpus: invalid type: string \"two\", expected u32",
        ),
        (
            r#"{"name": "a", "cpus": -1, "boot": {"image": "/i"}}"#,
            "cpus: invalid value: integer `-1`, expected u32",
        ),
        (
            r#"{"name": "a", "memory": "12Q", "boot": {"image": "/i"}}"#,
            "unknown size suffix",
        ),
        (
            r#"{"name": "a", "boot": {"image": "/i"}, "colour": "red"}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"name": "a", "boot": {"image": "/i", "bogus": 1}}"#,
            "boot.bogus: unknown field `bogus`",
        ),
        (r#"{"name": "a"}"#, "missing field `boot`"),
        (
            r#"{"name": "a", "boot": {"image": "/i"}} trailing"#,
            "trailing characters",
        ),
    ];
    for (body, needle) in cases {
        expect(
            &post(c, "/v1/vms", JSON, body.as_bytes()),
            400,
            needle,
            body,
        );
    }
    // Stop bodies.
    c.create(&def("web1")).unwrap();
    c.start("web1").unwrap();
    for (body, needle) in [
        (r#"{"timeout_secs": "x"}"#, "timeout_secs: invalid type"),
        (r#"{"timeout": 1}"#, "unknown field `timeout`"),
        (
            r#"{"timeout_secs": 99999}"#,
            "more than the maximum of 3600",
        ),
    ] {
        expect(
            &post(c, "/v1/vms/web1/stop", JSON, body.as_bytes()),
            400,
            needle,
            body,
        );
    }
    assert!(c.list().unwrap().iter().all(|v| v.name == "web1"));
    assert_eq!(
        c.info("web1").unwrap().state,
        VmState::Running,
        "no stop got through"
    );
    healthy(c);
}

#[test]
fn content_types_and_sizes() {
    let env = start();
    let c = &env.client;
    let body = serde_json::to_vec(&def("web1")).unwrap();
    expect(
        &post(c, "/v1/vms", "text/plain", &body),
        415,
        "Content-Type: application/json",
        "text",
    );
    let resp = c.send("POST", "/v1/vms", None).unwrap();
    expect(&resp, 415, "must be JSON", "no body, no type");
    // Parameters and +json types are JSON too.
    let resp = post(c, "/v1/vms", "application/json; charset=utf-8", &body);
    assert_eq!(resp.status, 201, "{}", resp.error_message());
    c.start("web1").unwrap();
    expect(
        &post(c, "/v1/vms/web1/stop", "text/plain", b"{}"),
        415,
        "must be JSON",
        "stop with a text body",
    );

    // 10 MiB: refused at the 1 MiB limit, valid JSON or not.
    let mut huge = br#"{"name": "big", "boot": {"image": "/i"}, "x": ""#.to_vec();
    huge.resize(10 << 20, b'a');
    huge.extend_from_slice(b"\"}");
    expect(
        &post(c, "/v1/vms", JSON, &huge),
        413,
        "larger than the limit of 1048576",
        "10 MiB",
    );
    expect(
        &post(c, "/v1/vms/web1/stop", JSON, &huge),
        413,
        "larger",
        "10 MiB stop",
    );
    // Sizes beyond the host are the host's to refuse, with its message.
    let mut d = def("big");
    d.cpus = 1000;
    expect(
        &post(c, "/v1/vms", JSON, &serde_json::to_vec(&d).unwrap()),
        400,
        "cpus 1000",
        "cpus",
    );
    d.cpus = 1;
    d.memory = vmk_api::model::ByteSize(1 << 40);
    expect(
        &post(c, "/v1/vms", JSON, &serde_json::to_vec(&d).unwrap()),
        400,
        "memory",
        "1T",
    );
    healthy(c);
}

#[test]
fn names_with_separators_never_reach_the_host() {
    let env = start();
    let c = &env.client;
    c.create(&def("web1")).unwrap();
    let long = "x".repeat(65);
    let paths = [
        "/v1/vms/..".to_string(),
        "/v1/vms/%2E%2E".into(),
        "/v1/vms/..%2F..%2Fetc%2Fpasswd".into(),
        "/v1/vms/..%2fweb1".into(),
        "/v1/vms/a%2Fb/start".into(),
        "/v1/vms/a%5Cb".into(),
        "/v1/vms/a%00b".into(),
        "/v1/vms/%00".into(),
        "/v1/vms/.hidden/metrics".into(),
        "/v1/vms/-rf/stop".into(),
        "/v1/vms/a%20b/console/log".into(),
        "/v1/vms/%FF%FE".into(),
        format!("/v1/vms/{long}"),
    ];
    for p in &paths {
        let method = if p.ends_with("start") || p.ends_with("stop") {
            "POST"
        } else {
            "GET"
        };
        let resp = c.send(method, p, None).unwrap();
        assert_eq!(resp.status, 400, "{method} {p}: {}", resp.error_message());
        assert_eq!(resp.header("content-type"), Some(JSON), "{p}");
        assert!(
            resp.error_message().contains("name"),
            "{p}: {}",
            resp.error_message()
        );
    }
    let resp = c.send("DELETE", "/v1/vms/..%2Fweb1", None).unwrap();
    assert_eq!(resp.status, 400);
    for name in ["../x", "a/b", "a\u{0}b", "", ".."] {
        let mut d = def("x");
        d.name = name.into();
        let resp = post(c, "/v1/vms", JSON, &serde_json::to_vec(&d).unwrap());
        expect(&resp, 400, "VM name", name);
    }
    // A raw request line with a dot-dot path (clients would normalize it).
    let resp = raw_unix(
        &env.socket(),
        b"GET /v1/vms/../host HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&resp), 404, "{resp}");
    error_of(&resp);
    let resp = raw_unix(
        &env.socket(),
        b"DELETE /v1/vms/.. HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&resp), 400, "{resp}");
    assert!(error_of(&resp).contains("VM name '..'"), "{resp}");
    // Nothing was created or deleted.
    let names: Vec<_> = c.list().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["web1"]);
    healthy(c);
}

#[test]
fn unknown_routes_wrong_methods_bad_queries() {
    let env = start();
    let c = &env.client;
    c.create(&def("web1")).unwrap();
    for (m, p) in [
        ("GET", "/"),
        ("GET", "/v1"),
        ("GET", "/v1/nothing"),
        ("GET", "/v1/vms/web1/a/b"),
        ("POST", "/v1/vms/web1/explode"),
        ("GET", "/v2/host"),
        ("GET", "/v1/vms/"),
    ] {
        expect(&c.send(m, p, None).unwrap(), 404, "no such API route", p);
    }
    for (m, p) in [
        ("PUT", "/v1/host"),
        ("DELETE", "/v1/vms"),
        ("GET", "/v1/vms/web1/start"),
        ("PATCH", "/v1/vms/web1"),
        ("POST", "/metrics"),
        ("DELETE", "/v1/vms/web1/console"),
    ] {
        expect(
            &c.send(m, p, None).unwrap(),
            405,
            &format!("method {m} is not allowed"),
            p,
        );
    }
    c.start("web1").unwrap();
    for (q, needle) in [
        ("max_bytes=abc", "bad query string"),
        ("max_bytes=-1", "bad query string"),
        ("lines=5", "unknown field `lines`"),
        ("max_bytes=99999999999", "more than the maximum"),
    ] {
        let p = format!("/v1/vms/web1/console/log?{q}");
        expect(&c.send("GET", &p, None).unwrap(), 400, needle, q);
    }
    // Not HTTP at all: hyper refuses it; the server goes on.
    let resp = raw_unix(&env.socket(), b"\x00\x01garbage\r\n\r\n");
    assert!(resp.is_empty() || status(&resp) == 400, "{resp}");
    healthy(c);
}

#[test]
fn tcp_needs_the_bearer_token() {
    let env = start_with_tcp();
    let addr = env.server.tcp_addr().unwrap();
    let send = |auth: Option<&str>, request_line: &str| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        raw(
            &mut s,
            format!("{request_line}\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        )
    };
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789"),
        Some("Bearer "),
        Some("Bearer s3cret-token-012345678"),
        Some("Bearer s3cret-token-01234567890"),
        Some(&format!("Basic {TOKEN}")),
        Some(TOKEN),
    ] {
        for line in [
            "GET /v1/host HTTP/1.1",
            "GET /v1/nothing HTTP/1.1",
            "PUT /v1/host HTTP/1.1",
            "GET /metrics HTTP/1.1",
            "GET /v1/vms/web1/console HTTP/1.1",
        ] {
            let resp = send(auth, line);
            assert_eq!(status(&resp), 401, "{auth:?} {line}: {resp}");
            assert!(resp.contains("www-authenticate: Bearer"), "{resp}");
            error_of(&resp);
        }
    }
    // The scheme is case-insensitive.
    let resp = send(Some(&format!("bearer {TOKEN}")), "GET /v1/host HTTP/1.1");
    assert_eq!(status(&resp), 200, "{resp}");
    let resp = send(Some(&format!("Bearer {TOKEN}")), "GET /v1/nothing HTTP/1.1");
    assert_eq!(status(&resp), 404, "{resp}");
    // The Unix socket needs no token.
    healthy(&env.client);
    healthy(&env.tcp_client());
}

#[test]
fn concurrent_conflicting_lifecycle_calls() {
    let env = start();
    let c = &env.client;
    c.create(&def("web1")).unwrap();
    // Running, so that the calls conflict (a stopped VM would just be deleted first).
    c.start("web1").unwrap();
    let calls = [
        ("POST", "/v1/vms/web1/start"),
        ("POST", "/v1/vms/web1/stop"),
        ("POST", "/v1/vms/web1/poweroff"),
        ("POST", "/v1/vms/web1/reset"),
        ("DELETE", "/v1/vms/web1"),
    ];
    let barrier = Arc::new(Barrier::new(50));
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let (m, p) = calls[i % calls.len()];
            let c = c.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let resp = c.send(m, p, None).unwrap();
                (m, p, resp)
            })
        })
        .collect();
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for t in threads {
        let (m, p, resp) = t.join().unwrap();
        *counts.entry(resp.status).or_default() += 1;
        match resp.status {
            200 | 204 => {}
            404 | 409 => {
                assert_eq!(resp.header("content-type"), Some(JSON));
                let msg = resp.error_message();
                assert!(msg.contains("web1"), "{m} {p}: {msg}");
            }
            s => panic!("{m} {p}: unexpected {s}: {}", resp.error_message()),
        }
    }
    assert!(counts.get(&409).copied().unwrap_or(0) > 0, "{counts:?}");
    // The VM is in one consistent state (or gone), and the host answers.
    match c.info("web1") {
        Ok(vm) => assert!(
            matches!(
                vm.state,
                VmState::Stopped | VmState::Running | VmState::Stopping
            ),
            "{vm:?}"
        ),
        Err(e) => assert_eq!(e.status(), Some(404), "{e}"),
    }
    healthy(c);
}

/// Writes `request`, then reads until the server closes the connection. Returns what it
/// sent and how long that took; panics if the connection is still open after `limit`.
fn exchange(
    stream: &mut (impl Read + Write),
    request: &[u8],
    limit: Duration,
) -> (String, Duration) {
    let t0 = Instant::now();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A reset after the answer is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "connection still open after {:?} ({e}); got {:?}",
                t0.elapsed(),
                String::from_utf8_lossy(&out)
            ),
        }
        assert!(t0.elapsed() < limit, "still open after {:?}", t0.elapsed());
    }
    (String::from_utf8_lossy(&out).into_owned(), t0.elapsed())
}

fn unix_stream(env: &Env, read_timeout: Duration) -> UnixStream {
    let s = UnixStream::connect(env.socket()).unwrap();
    s.set_read_timeout(Some(read_timeout)).unwrap();
    s
}

fn tcp_stream(env: &Env, read_timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(env.server.tcp_addr().unwrap()).unwrap();
    s.set_read_timeout(Some(read_timeout)).unwrap();
    s
}

/// The client connection preface of HTTP/2 (RFC 9113 3.4), as `curl --http2-prior-knowledge`
/// sends it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[test]
fn http2_is_not_served() {
    let env = start_with_tcp();
    // The preface and an empty SETTINGS frame (length 0, type 4, flags 0, stream 0): an
    // HTTP/2 server would answer with its own SETTINGS frame and keep the connection; this
    // one closes it at once.
    let mut h2 = H2_PREFACE.to_vec();
    h2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let limit = Duration::from_secs(5);
    for (what, request) in [
        ("preface + SETTINGS", &h2[..]),
        ("preface only", H2_PREFACE),
    ] {
        let (unix, took_unix) = exchange(&mut unix_stream(&env, limit), request, limit);
        let (tcp, took_tcp) = exchange(&mut tcp_stream(&env, limit), request, limit);
        for (side, resp, took) in [("unix", unix, took_unix), ("tcp", tcp, took_tcp)] {
            // hyper closes on the preface without a word; an HTTP/1.1 error would do too.
            // What must not come is an HTTP/2 frame.
            assert!(
                resp.is_empty() || resp.starts_with("HTTP/1.1 4") || resp.starts_with("HTTP/1.1 5"),
                "{side} {what}: {resp:?}"
            );
            assert!(
                took < Duration::from_secs(2),
                "{side} {what}: took {took:?}"
            );
        }
    }
    healthy(&env.client);
    healthy(&env.tcp_client());
}

#[test]
fn bodies_must_be_json_objects() {
    let env = start();
    let c = &env.client;
    c.create(&def("web1")).unwrap();
    c.start("web1").unwrap();
    c.add_vswitch(&vmk_api::network::VSwitchDef {
        name: "sw".into(),
        mtu: 1500,
        teaming: Default::default(),
    })
    .unwrap();
    let object = "the request body must be a JSON object";
    for (method, path, body, needle) in [
        // Arrays filled the fields by position and got round the unknown-field refusal.
        ("PATCH", "/v1/vswitches/sw", "[9000]", object),
        ("POST", "/v1/portgroups", r#"["pg","sw",5]"#, object),
        (
            "POST",
            "/v1/vms",
            r#"["web2", 1, "64M", false, {"image": "/i"}]"#,
            object,
        ),
        ("POST", "/v1/vswitches", r#"["sw2", 9000]"#, object),
        (
            "POST",
            "/v1/vswitches/sw/uplinks",
            r#"["t0", "tap"]"#,
            object,
        ),
        ("POST", "/v1/vms/web1/stop", "[1]", object),
        ("PATCH", "/v1/portgroups/pg", "[]", object),
        // Other values that are not objects.
        ("POST", "/v1/vms", "5", "not a number"),
        ("POST", "/v1/vms", "null", "not null"),
        ("POST", "/v1/vms", r#""web2""#, "not a string"),
        ("PATCH", "/v1/vswitches/sw", "true", "not a boolean"),
        // Objects inside the body too.
        (
            "POST",
            "/v1/vms",
            r#"{"name": "web2", "boot": ["/i"]}"#,
            "boot: must be a JSON object, not an array",
        ),
        (
            "POST",
            "/v1/vms",
            r#"{"name": "web2", "boot": {"image": "/i"}, "disk": [["/d.vmdk", true]]}"#,
            "disk[0]: must be a JSON object",
        ),
        (
            "PATCH",
            "/v1/vswitches/sw",
            r#"{"teaming": [["t0"], [], false]}"#,
            "teaming: must be a JSON object",
        ),
    ] {
        let resp = c.send(method, path, Some((JSON, body.as_bytes()))).unwrap();
        expect(&resp, 400, needle, &format!("{method} {path} {body}"));
    }
    // Nothing got through.
    assert_eq!(c.vswitches().unwrap()[0].mtu, 1500);
    assert!(c.portgroups().unwrap().is_empty());
    assert_eq!(c.vswitches().unwrap().len(), 1);
    let names: Vec<_> = c.list().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["web1"]);
    assert_eq!(c.info("web1").unwrap().state, VmState::Running);
    // The same requests as objects are fine.
    let resp = c
        .send(
            "PATCH",
            "/v1/vswitches/sw",
            Some((JSON, br#"{"mtu": 9000}"#)),
        )
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.error_message());
    let resp = post(
        c,
        "/v1/portgroups",
        JSON,
        br#"{"name": "pg", "vswitch": "sw", "vlan": 5}"#,
    );
    assert_eq!(resp.status, 201, "{}", resp.error_message());
    healthy(c);
}

#[test]
fn null_is_not_a_value() {
    let env = start();
    let c = &env.client;
    c.create(&def("web1")).unwrap();
    c.start("web1").unwrap();
    c.add_vswitch(&vmk_api::network::VSwitchDef {
        name: "sw".into(),
        mtu: 1500,
        teaming: Default::default(),
    })
    .unwrap();
    let null = "null is not allowed here";
    for (method, path, body, needle) in [
        (
            "POST",
            "/v1/vms/web1/stop",
            r#"{"timeout_secs": null}"#,
            "timeout_secs: null",
        ),
        ("PATCH", "/v1/vswitches/sw", r#"{"mtu": null}"#, "mtu: null"),
        ("PATCH", "/v1/vswitches/sw", r#"{"teaming": null}"#, null),
        (
            "POST",
            "/v1/portgroups",
            r#"{"name": "pg", "vswitch": "sw", "shaping": null}"#,
            "shaping: null",
        ),
        (
            "POST",
            "/v1/vms",
            r#"{"name": "web2", "boot": {"image": null, "kernel": "/k"}}"#,
            "boot.image: null",
        ),
        (
            "POST",
            "/v1/vms",
            r#"{"name": "web2", "cpus": null, "boot": {"image": "/i"}}"#,
            "cpus: invalid type: null",
        ),
        (
            "POST",
            "/v1/vms",
            r#"{"name": "web2", "boot": {"image": "/i"}, "disk": [{"path": "/d", "serial": null}]}"#,
            "disk[0].serial: null",
        ),
    ] {
        let resp = c.send(method, path, Some((JSON, body.as_bytes()))).unwrap();
        expect(&resp, 400, needle, &format!("{method} {path} {body}"));
    }
    assert_eq!(
        c.info("web1").unwrap().state,
        VmState::Running,
        "no stop got through"
    );
    assert_eq!(c.vswitches().unwrap()[0].mtu, 1500);
    assert!(c.portgroups().unwrap().is_empty());
    // Leaving the field out is how to ask for the default.
    let resp = post(c, "/v1/vms/web1/stop", JSON, b"{}");
    assert_eq!(resp.status, 200, "{}", resp.error_message());
    healthy(c);
}

#[test]
fn a_body_that_never_completes_is_bounded() {
    let bound = Duration::from_secs(1);
    let env = start_with_body_timeout(bound);
    env.client.create(&def("web1")).unwrap();
    env.client.start("web1").unwrap();
    let limit = Duration::from_secs(5);
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    // 100 bytes announced, 4 sent, and the client then waits.
    let partial = |line: &str, auth: &str| {
        format!(
            "{line}\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 100\
             \r\n\r\n{{\"na"
        )
    };
    for (side, line) in [
        ("unix", "POST /v1/vms HTTP/1.1"),
        ("unix", "POST /v1/vms/web1/stop HTTP/1.1"),
        ("unix", "PATCH /v1/vswitches/sw HTTP/1.1"),
        ("tcp", "POST /v1/vms HTTP/1.1"),
    ] {
        let request = partial(line, if side == "tcp" { &auth } else { "" });
        let (resp, took) = if side == "tcp" {
            exchange(&mut tcp_stream(&env, limit), request.as_bytes(), limit)
        } else {
            exchange(&mut unix_stream(&env, limit), request.as_bytes(), limit)
        };
        assert_eq!(status(&resp), 408, "{side} {line}: {resp}");
        assert!(
            error_of(&resp).contains("did not arrive within 1 s"),
            "{resp}"
        );
        assert!(
            took >= bound && took < limit,
            "{side} {line}: took {took:?}"
        );
    }
    // Routes that read no body, and requests refused before the body (no token), are
    // answered at once and the connection closed: the rest of the body is never waited for.
    for (side, line) in [
        ("unix", "GET /v1/host HTTP/1.1"),
        ("tcp", "POST /v1/vms HTTP/1.1"),
    ] {
        let request = partial(line, "");
        let (resp, took) = if side == "tcp" {
            exchange(&mut tcp_stream(&env, limit), request.as_bytes(), limit)
        } else {
            exchange(&mut unix_stream(&env, limit), request.as_bytes(), limit)
        };
        let expected = if side == "tcp" { 401 } else { 200 };
        assert_eq!(status(&resp), expected, "{side} {line}: {resp}");
        assert!(took < bound, "{side} {line}: took {took:?}");
    }
    assert_eq!(env.client.list().unwrap().len(), 1);
    assert_eq!(env.client.info("web1").unwrap().state, VmState::Running);
    healthy(&env.client);
}

/// `test_fault_on_console` needs the cargo feature `test-hooks` (vmk-machine refuses it at
/// start otherwise): a host that cannot run it refuses it at create instead of storing a VM
/// that never starts. The real host, served by the real API, with its test hooks off as in
/// the product, and on as in this test build.
#[test]
fn test_fault_hook_is_refused_at_create_where_unsupported() {
    use vmk_host::runtime::Host;
    use vmk_host::validate::{HostLimits, TEST_HOOKS};
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("Image");
    std::fs::write(&kernel, b"not started in this test").unwrap();
    let body = serde_json::to_vec(&serde_json::json!({
        "name": "faulty",
        "memory": "64M",
        "boot": {"kernel": kernel},
        "test_fault_on_console": "BOOM",
    }))
    .unwrap();
    for test_hooks in [false, TEST_HOOKS] {
        let sub = dir.path().join(format!("hooks-{test_hooks}"));
        let cfg = config(&sub);
        let limits = HostLimits {
            cpus: 2,
            memory: 1 << 30,
            test_hooks,
        };
        let host = Host::open_with_limits(&cfg, limits).unwrap();
        let server = vmk_host::fake::TestServer::start(host.clone(), &cfg).unwrap();
        let c = Client::unix(server.socket());
        let resp = post(&c, "/v1/vms", JSON, &body);
        if test_hooks {
            assert_eq!(resp.status, 201, "{}", resp.error_message());
        } else {
            expect(&resp, 400, "without the test-hooks feature", "release");
            assert!(c.list().unwrap().is_empty(), "nothing stored");
            assert!(!vmk_host::inventory::vm_dir(&cfg.dir, "faulty")
                .unwrap()
                .exists());
        }
        server.stop().unwrap();
        host.shutdown(Duration::from_secs(1));
    }
}
