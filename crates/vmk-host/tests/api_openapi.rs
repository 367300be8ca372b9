//! docs/api/openapi.json matches the implementation: the same routes and methods as
//! `api::routes()`, every route answers with a documented status and a body that validates
//! against the documented schema, and the schemas' property names are exactly what serde
//! writes for the model types (samples with every optional field set must use every
//! documented property, and nothing else but the test-only fields of [`UNDOCUMENTED`]).

mod api_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use api_support::*;
use serde_json::{json, Value};
use vmk_api::model::StopRequest;
use vmk_api::model::*;
use vmk_api::network::*;
use vmk_host::api::routes;

fn doc() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api/openapi.json");
    let text = std::fs::read_to_string(path).expect("read docs/api/openapi.json");
    serde_json::from_str(&text).expect("openapi.json is JSON")
}

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "head", "options"];

#[test]
fn routes_match_the_router() {
    let doc = doc();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (k, _) in item.as_object().unwrap() {
            if METHODS.contains(&k.as_str()) {
                documented.insert((k.to_uppercase(), path.clone()));
            } else {
                assert_eq!(k, "parameters", "{path}: unexpected key {k}");
            }
        }
    }
    let implemented: BTreeSet<_> = routes()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        implemented.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routes missing from the document"
    );
    assert_eq!(
        documented.difference(&implemented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented routes the router does not have"
    );
}

/// (schema, property) that serde writes and the document leaves out on purpose: test hooks
/// that only builds with the cargo feature `test-hooks` accept, no part of the API clients
/// use.
const UNDOCUMENTED: &[(&str, &str)] = &[("VmDefinition", "test_fault_on_console")];

/// Validates JSON values against the document's schemas and records which object
/// properties the values used.
struct Checker {
    doc: Value,
    /// (schema name, property) of every documented property.
    documented: BTreeSet<(String, String)>,
    used: BTreeSet<(String, String)>,
    /// The [`UNDOCUMENTED`] properties the values used.
    undocumented_used: BTreeSet<(String, String)>,
}

impl Checker {
    fn new() -> Checker {
        let doc = doc();
        let mut documented = BTreeSet::new();
        let schemas = doc["components"]["schemas"].as_object().unwrap().clone();
        for (name, s) in &schemas {
            let mut record = |s: &Value, owner: String| {
                if let Some(props) = s["properties"].as_object() {
                    for p in props.keys() {
                        documented.insert((owner.clone(), p.clone()));
                    }
                }
            };
            record(s, name.clone());
            for (i, alt) in s["oneOf"].as_array().into_iter().flatten().enumerate() {
                record(alt, format!("{name}/{i}"));
            }
        }
        Checker {
            doc,
            documented,
            used: BTreeSet::new(),
            undocumented_used: BTreeSet::new(),
        }
    }

    fn schema(&self, name: &str) -> Value {
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    /// Checks `v` against `schema`; `owner` names the schema for the property record.
    fn check(&mut self, schema: &Value, v: &Value, owner: &str, at: &str) -> Result<(), String> {
        if let Some(r) = schema["$ref"].as_str() {
            let name = r.strip_prefix("#/components/schemas/").expect("local $ref");
            let s = self.doc["components"]["schemas"][name].clone();
            assert!(!s.is_null(), "dangling $ref {r}");
            return self.check(&s, v, name, at);
        }
        if let Some(alts) = schema["oneOf"]
            .as_array()
            .filter(|_| schema["type"].is_null())
        {
            let mut errors = Vec::new();
            let mut matched = 0;
            for (i, alt) in alts.clone().iter().enumerate() {
                let used = self.used.clone();
                match self.check(alt, v, &format!("{owner}/{i}"), at) {
                    Ok(()) => matched += 1,
                    Err(e) => {
                        self.used = used;
                        errors.push(e);
                    }
                }
            }
            return match matched {
                1 => Ok(()),
                0 => Err(format!("{at}: matches no alternative: {errors:?}")),
                n => Err(format!("{at}: matches {n} alternatives of oneOf")),
            };
        }
        if let Some(c) = schema.get("const") {
            return if c == v {
                Ok(())
            } else {
                Err(format!("{at}: {v} is not {c}"))
            };
        }
        if let Some(e) = schema["enum"].as_array() {
            if !e.contains(v) {
                return Err(format!("{at}: {v} is not one of {e:?}"));
            }
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(|t| t.as_str()).collect(),
            _ => panic!("{owner} at {at}: schema without type: {schema}"),
        };
        let actual = match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if !types.contains(&actual) {
            return Err(format!(
                "{at}: {actual} {v} where the document says {types:?}"
            ));
        }
        // Constraints beside the type: exactly one `oneOf` alternative holds (alternatives
        // that only say what is required or not, as Boot's).
        if let Some(alts) = schema["oneOf"].as_array() {
            let n = alts.iter().filter(|a| holds(a, v)).count();
            if n != 1 {
                return Err(format!(
                    "{at}: {v} satisfies {n} of the oneOf constraints of {owner}, not 1"
                ));
            }
        }
        match v {
            Value::Number(n) => {
                if let (Some(min), Some(x)) = (schema["minimum"].as_i64(), n.as_i64()) {
                    if x < min {
                        return Err(format!("{at}: {x} < minimum {min}"));
                    }
                }
                if let (Some(max), Some(x)) = (schema["maximum"].as_u64(), n.as_u64()) {
                    if x > max {
                        return Err(format!("{at}: {x} > maximum {max}"));
                    }
                }
                Ok(())
            }
            Value::String(text) => {
                let len = text.chars().count() as u64;
                if schema["minLength"].as_u64().is_some_and(|m| len < m)
                    || schema["maxLength"].as_u64().is_some_and(|m| len > m)
                {
                    return Err(format!("{at}: {v} has a length outside {schema}"));
                }
                Ok(())
            }
            Value::Array(items) => {
                if schema["maxItems"]
                    .as_u64()
                    .is_some_and(|m| items.len() as u64 > m)
                {
                    return Err(format!("{at}: more than maxItems"));
                }
                for (i, item) in items.iter().enumerate() {
                    self.check(&schema["items"], item, owner, &format!("{at}[{i}]"))?;
                }
                Ok(())
            }
            Value::Object(map) => {
                let props = schema["properties"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                for (k, item) in map {
                    if UNDOCUMENTED.contains(&(owner, k.as_str())) {
                        self.undocumented_used
                            .insert((owner.to_string(), k.clone()));
                        continue;
                    }
                    let s = props.get(k).ok_or_else(|| {
                        format!("{at}: property {k} is not documented in {owner}")
                    })?;
                    self.check(s, item, owner, &format!("{at}.{k}"))?;
                    self.used.insert((owner.to_string(), k.clone()));
                }
                for r in schema["required"].as_array().into_iter().flatten() {
                    let r = r.as_str().unwrap();
                    if !map.contains_key(r) {
                        return Err(format!("{at}: required {owner}.{r} is missing"));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn valid<T: serde::Serialize>(&mut self, schema: &str, sample: &T) {
        let v = serde_json::to_value(sample).unwrap();
        let s = self.schema(schema);
        if let Err(e) = self.check(&s, &v, schema, schema) {
            panic!("{schema} sample does not match the document: {e}\n{v:#}");
        }
    }
}

/// Whether `v` satisfies a constraint-only schema: `required`, `not`, `anyOf`.
fn holds(c: &Value, v: &Value) -> bool {
    let required = c["required"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|r| r.as_str().is_some_and(|r| v.get(r).is_some()));
    let not = c.get("not").is_none_or(|n| !holds(n, v));
    let any = c["anyOf"]
        .as_array()
        .is_none_or(|alts| alts.iter().any(|a| holds(a, v)));
    required && not && any
}

fn full_definition() -> VmDefinition {
    VmDefinition {
        name: "web1".into(),
        cpus: 2,
        memory: ByteSize(1 << 30),
        autostart: true,
        boot: Boot {
            image: None,
            kernel: Some("/k".into()),
            initrd: Some("/i".into()),
            append: Some("console=ttyS0".into()),
        },
        disks: vec![DiskDef {
            path: "/d.vmdk".into(),
            read_only: true,
            serial: Some("SER1".into()),
        }],
        nics: vec![NicDef {
            portgroup: "vm-network".into(),
            mac: Some("02:00:00:00:00:01".into()),
        }],
        resources: Resources {
            cpu_shares: Shares::Custom(2000),
            cpu_reservation_mhz: 100,
            cpu_limit_mhz: Some(1000),
            cpu_affinity: Some(vec![0, 1]),
            mem_shares: Shares::Level(ShareLevel::High),
            mem_reservation: ByteSize(1 << 20),
            mem_limit: Some(ByteSize(1 << 30)),
        },
        test_fault_on_console: Some("boom".into()),
    }
}

fn host_info() -> HostInfo {
    HostInfo {
        hostname: "h".into(),
        version: "0.1.0".into(),
        cpus: 2,
        memory: 1 << 34,
        vms: 1,
        vms_running: 1,
        uptime_secs: 3,
        dir: "/var/lib/vmk".into(),
        datastores: vec![
            DatastoreStatus {
                name: "ds1".into(),
                device: "/srv/ds1.img".into(),
                state: "mounted".into(),
                host_id: Some(1),
                error: None,
            },
            DatastoreStatus {
                name: "ds2".into(),
                device: "/srv/ds2.img".into(),
                state: "error".into(),
                host_id: None,
                error: Some("not a vmk datastore".into()),
            },
        ],
        cpu: CpuInfo {
            cpu_mhz: 2600,
            cpus: vec![0, 1],
            capacity_mhz: 5200,
            reserved_mhz: 1000,
            scheduler: "vmk".into(),
            edition: "enterprise-plus".into(),
            max_vcpus_per_vm: 8,
            cores: 2,
            threads_per_core: 1,
            numa_nodes: 1,
            power_policy: "balanced".into(),
            power_note: "balanced: cpufreq governor not set: this host exposes no cpufreq".into(),
        },
    }
}

fn vm_metrics() -> VmMetrics {
    VmMetrics {
        name: "web1".into(),
        state: VmState::Running,
        vcpus: vec![VcpuMetrics {
            cpu_time_ns: 1,
            instret: 2,
            ready_ns: 3,
            costop_ns: 4,
            wait_ns: 5,
            limited_ns: 6,
        }],
        memory_configured: 1 << 30,
        memory_touched: 1 << 20,
        disks: vec![DiskMetrics {
            path: "/d.vmdk".into(),
            ..Default::default()
        }],
        nics: vec![NicMetrics {
            portgroup: "pg0".into(),
            mac: "02:56:4b:00:00:01".into(),
            ..Default::default()
        }],
    }
}

fn uplink_status(error: Option<String>) -> UplinkStatus {
    UplinkStatus {
        name: "up0".into(),
        vswitch: "sw0".into(),
        kind: UplinkKind::Tap,
        attached: error.is_none(),
        link_up: true,
        in_use: true,
        error,
        rx_frames: 1,
        rx_bytes: 2,
        tx_frames: 3,
        tx_bytes: 4,
        drops: UplinkDropCounts::default(),
    }
}

fn full_portgroup() -> PortGroupDef {
    PortGroupDef {
        name: "pg0".into(),
        vswitch: "sw0".into(),
        vlan: 4095,
        security: SecurityDef {
            promiscuous: Policy::Accept,
            mac_changes: Policy::Reject,
            forged_transmits: Policy::Accept,
        },
        shaping: Some(ShapingDef {
            average_bps: 8_000_000,
            peak_bps: 10_000_000,
            burst_bytes: 65536,
        }),
    }
}

/// The network's schemas: every property of the network types is written by serde.
fn network_samples(c: &mut Checker) {
    let teaming = TeamingDef {
        active: vec!["up0".into()],
        standby: vec!["up1".into()],
        failback: false,
    };
    let sw = VSwitchInfo {
        name: "sw0".into(),
        mtu: 9000,
        teaming: teaming.clone(),
        portgroups: vec!["pg0".into()],
        uplinks: vec![uplink_status(None), uplink_status(Some("no TAP".into()))],
    };
    let port = PortStatus {
        name: "web1/eth0".into(),
        vswitch: "sw0".into(),
        counters: vm_metrics().nics[0].clone(),
        effective_mac: "02:56:4b:00:00:01".into(),
        uplink: Some("up0".into()),
    };
    c.valid(
        "NetworkInfo",
        &NetworkInfo {
            vswitches: vec![sw],
            portgroups: vec![PortGroupInfo {
                config: full_portgroup(),
                ports: 1,
            }],
            ports: vec![port],
        },
    );
    c.valid(
        "VSwitchDef",
        &VSwitchDef {
            name: "sw0".into(),
            mtu: 1500,
            teaming: teaming.clone(),
        },
    );
    c.valid(
        "VSwitchUpdate",
        &VSwitchUpdate {
            mtu: Some(9000),
            teaming: Some(teaming),
        },
    );
    c.valid(
        "UplinkSpec",
        &UplinkSpec {
            name: "eth1".into(),
            kind: UplinkKind::Packet,
        },
    );
    c.valid(
        "PortGroupUpdate",
        &PortGroupUpdate {
            vlan: Some(10),
            promiscuous: Some(Policy::Reject),
            mac_changes: Some(Policy::Accept),
            forged_transmits: Some(Policy::Reject),
            shaping: full_portgroup().shaping,
            no_shaping: true,
        },
    );
}

#[test]
fn schemas_match_serde() {
    let mut c = Checker::new();
    let full = VmInfo {
        name: "web1".into(),
        state: VmState::Running,
        definition: full_definition(),
        last_exit: Some(ExitInfo::PoweredOff { status: 3 }),
        started_at: Some(1),
        ended_at: Some(2),
        boots: 4,
        nics: vec![VmNicInfo {
            portgroup: "pg0".into(),
            mac: "02:00:00:00:00:01".into(),
            generated: false,
        }],
    };
    c.valid("VmInfo", &full);
    network_samples(&mut c);
    let minimal = VmInfo {
        last_exit: None,
        started_at: None,
        ended_at: None,
        definition: minimal_def("db"),
        nics: vec![],
        ..full.clone()
    };
    c.valid("VmInfo", &minimal);
    c.valid("ExitInfo", &ExitInfo::Killed);
    c.valid("ExitInfo", &ExitInfo::Crashed { reason: "x".into() });
    for s in [
        VmState::Stopped,
        VmState::Starting,
        VmState::Stopping,
        VmState::Crashed,
    ] {
        c.valid("VmState", &s);
    }
    for s in [ShareLevel::Low, ShareLevel::Normal] {
        c.valid("Shares", &Shares::Level(s));
    }
    c.valid("HostInfo", &host_info());
    c.valid("VmMetrics", &vm_metrics());
    c.valid(
        "HostMetrics",
        &HostMetrics {
            host: host_info(),
            rss: 1,
            cpu_time_ns: 2,
            vms: vec![vm_metrics()],
            pcpus: vec![PcpuMetrics { cpu: 1, used_ns: 7 }],
        },
    );
    c.valid(
        "StopRequest",
        &StopRequest {
            timeout_secs: Some(5),
        },
    );
    c.valid(
        "PowerRequest",
        &PowerRequest {
            policy: PowerPolicy::HighPerformance,
        },
    );
    c.valid("Error", &json!({"error": "x"}));
    // The other spellings a client may send validate too.
    c.valid("ByteSize", &json!("512M"));
    c.valid(
        "VmDefinition",
        &json!({"name": "a", "boot": {"image": "/i"}}),
    );

    let unused: Vec<_> = c.documented.difference(&c.used).collect();
    assert!(
        unused.is_empty(),
        "documented properties serde never writes: {unused:?}"
    );
    // The undocumented ones are real (serde writes them) and stay out of the document.
    for &(schema, prop) in UNDOCUMENTED {
        let key = (schema.to_string(), prop.to_string());
        assert!(
            c.undocumented_used.contains(&key),
            "{schema}.{prop}: serde does not write it (drop it from UNDOCUMENTED)"
        );
        assert!(
            !c.documented.contains(&key),
            "{schema}.{prop} is a test hook: it stays out of the document"
        );
    }
}

/// What the document says a definition requires is what deserialization requires.
#[test]
fn required_fields_of_inputs() {
    let doc = doc();
    let schemas = &doc["components"]["schemas"];
    let required = |name: &str| -> Vec<String> {
        schemas[name]["required"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let minimal =
        json!({"name": "a", "boot": {}, "disk": [{"path": "/d"}], "nic": [{"portgroup": "p"}]});
    serde_json::from_value::<VmDefinition>(minimal.clone()).expect("the minimal definition");
    assert_eq!(required("VmDefinition"), ["name", "boot"]);
    for r in required("VmDefinition") {
        let mut v = minimal.clone();
        v.as_object_mut().unwrap().remove(&r);
        assert!(
            serde_json::from_value::<VmDefinition>(v).is_err(),
            "{r} is required"
        );
    }
    for (list, schema) in [("disk", "DiskDef"), ("nic", "NicDef")] {
        for r in required(schema) {
            let mut v = minimal.clone();
            v[list][0].as_object_mut().unwrap().remove(&r);
            assert!(
                serde_json::from_value::<VmDefinition>(v).is_err(),
                "{schema}.{r}"
            );
        }
    }
    for s in ["Boot", "Resources", "StopRequest"] {
        assert!(required(s).is_empty(), "{s} has only optional fields");
    }
    // Everything serde writes for a full definition, it reads back.
    let full = serde_json::to_value(full_definition()).unwrap();
    assert_eq!(
        serde_json::from_value::<VmDefinition>(full).unwrap(),
        full_definition()
    );
}

/// Calls every route on a fresh fake host and checks the status and the body against the
/// route's documented responses.
#[test]
fn every_route_answers_as_documented() {
    let mut checker = Checker::new();
    let doc = checker.doc.clone();
    for (method, template) in routes() {
        let op = &doc["paths"][template][method.to_lowercase()];
        let env = start();
        env.client.create(&def("web1")).unwrap();
        if !matches!(template, "/v1/vms/{name}/start" | "/v1/vms/{name}") {
            env.client.start("web1").unwrap();
        }
        env.host.guest_output("web1", b"hello").unwrap();
        // The network routes find a vSwitch with an uplink and (but for the vSwitch's
        // removal, which needs none) a port group.
        env.client
            .add_vswitch(&VSwitchDef {
                name: "sw0".into(),
                mtu: 1500,
                teaming: TeamingDef::default(),
            })
            .unwrap();
        env.client
            .add_uplink(
                "sw0",
                &UplinkSpec {
                    name: "up0".into(),
                    kind: UplinkKind::Tap,
                },
            )
            .unwrap();
        if !(method == "DELETE" && template == "/v1/vswitches/{vswitch}") {
            env.client.add_portgroup(&full_portgroup()).unwrap();
        }
        let net_body: Option<Vec<u8>> = match (method, template) {
            ("POST", "/v1/vswitches") => Some(br#"{"name": "sw1", "mtu": 9000}"#.to_vec()),
            ("PATCH", "/v1/vswitches/{vswitch}") => Some(br#"{"mtu": 9000}"#.to_vec()),
            ("POST", "/v1/vswitches/{vswitch}/uplinks") => {
                Some(br#"{"name": "up1", "kind": "tap"}"#.to_vec())
            }
            ("POST", "/v1/portgroups") => {
                Some(br#"{"name": "pg1", "vswitch": "sw0", "vlan": 10}"#.to_vec())
            }
            ("PATCH", "/v1/portgroups/{portgroup}") => {
                Some(br#"{"promiscuous": "accept"}"#.to_vec())
            }
            _ => None,
        };

        let path = template
            .replace("{name}", "web1")
            .replace("{vswitch}", "sw0")
            .replace("{portgroup}", "pg0")
            .replace("{uplink}", "up0");
        let (status, content_type, body) = if template.ends_with("/console") {
            let mut s = std::os::unix::net::UnixStream::connect(env.socket()).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: vmk-console\r\n\r\n"
            )
            .unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            (status(&head), None, Vec::new())
        } else {
            let body = match (method, template) {
                ("POST", "/v1/vms") => Some(serde_json::to_vec(&def("web2")).unwrap()),
                ("PUT", "/v1/vms/{name}") => Some(edited_body()),
                ("POST", "/v1/vms/{name}/stop") => Some(br#"{"timeout_secs": 5}"#.to_vec()),
                ("PUT", "/v1/host/power") => Some(br#"{"policy": "low-power"}"#.to_vec()),
                _ => net_body.clone(),
            };
            let resp = env
                .client
                .send(
                    method,
                    &path,
                    body.as_deref().map(|b| ("application/json", b)),
                )
                .unwrap();
            let ct = resp.header("content-type").map(str::to_string);
            (resp.status, ct, resp.body)
        };
        assert!(
            (200..300).contains(&status) || status == 101,
            "{method} {path}: {status}"
        );
        let documented = &op["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{method} {template}: status {status} not documented"
        );
        if let Some(ct) = content_type {
            let content = &documented["content"];
            let media = ct.split(';').next().unwrap();
            let (key, media_doc) = content
                .as_object()
                .unwrap_or_else(|| panic!("{method} {template}: no content documented"))
                .iter()
                .find(|(k, _)| k.split(';').next().unwrap() == media)
                .unwrap_or_else(|| panic!("{method} {template}: {ct} not documented"));
            if key == "application/json" {
                let v: Value = serde_json::from_slice(&body).unwrap();
                let s = media_doc["schema"].clone();
                if let Err(e) = checker.check(&s, &v, "response", &format!("{method} {template}")) {
                    panic!("{e}");
                }
            }
        }

        // Error answers the network routes can give are documented too: a hostile name
        // (400) and a missing one (404), in each parameter.
        for param in ["{vswitch}", "{portgroup}", "{uplink}"] {
            if !template.contains(param) {
                continue;
            }
            let named = |v: &str| {
                template
                    .replace(param, v)
                    .replace("{vswitch}", "sw0")
                    .replace("{portgroup}", "pg0")
                    .replace("{uplink}", "up0")
            };
            for (p, want) in [(named("..%2Fetc"), 400), (named("nope"), 404)] {
                let resp = env
                    .client
                    .send(
                        method,
                        &p,
                        net_body.as_deref().map(|b| ("application/json", b)),
                    )
                    .unwrap();
                assert_eq!(resp.status, want, "{method} {p}: {}", resp.error_message());
                assert!(
                    op["responses"][want.to_string()].is_object(),
                    "{method} {template}: {want} not documented"
                );
            }
        }

        // Error answers the route can give are documented too.
        if template.contains("{name}") {
            let bad = template.replace("{name}", "..%2Fetc");
            let missing = template.replace("{name}", "nope");
            // The console asks for the upgrade headers (426) before it looks the VM up.
            let not_found = if template.ends_with("/console") {
                426
            } else {
                404
            };
            // A replaced definition is sent with its body (the body is read before the
            // VM is looked up).
            let body = (method == "PUT").then(edited_body);
            for (p, want) in [(bad, 400), (missing, not_found)] {
                let resp = env
                    .client
                    .send(method, &p, body.as_deref().map(|b| ("application/json", b)))
                    .unwrap();
                assert_eq!(resp.status, want, "{method} {p}");
                assert!(
                    op["responses"][want.to_string()].is_object(),
                    "{method} {template}: {want} not documented"
                );
            }
        }
    }
}

/// The body of `PUT /v1/vms/web1`: web1's definition with another vCPU count.
fn edited_body() -> Vec<u8> {
    let mut d = def("web1");
    d.cpus = 4;
    serde_json::to_vec(&d).unwrap()
}

/// The document names each schema it defines somewhere (no stale leftovers).
#[test]
fn every_schema_is_used() {
    let doc = doc();
    let text = doc.to_string();
    let mut counts = BTreeMap::new();
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        counts.insert(
            name.clone(),
            text.matches(&format!("\"#/components/schemas/{name}\""))
                .count(),
        );
    }
    let unused: Vec<_> = counts.iter().filter(|(_, n)| **n == 0).collect();
    assert!(unused.is_empty(), "unused schemas: {unused:?}");
}

/// Hostile network input gets a 4xx with a message that says what is wrong.
#[test]
fn network_hostile_input_is_refused() {
    let env = start();
    let send = |m: &str, p: &str, body: &str| {
        let r = env
            .client
            .send(m, p, Some(("application/json", body.as_bytes())))
            .unwrap();
        (r.status, r.error_message())
    };
    assert_eq!(send("POST", "/v1/vswitches", r#"{"name": "sw0"}"#).0, 201);
    for (m, p, body, status, says) in [
        (
            "POST",
            "/v1/vswitches",
            r#"{"name": "sw1", "mtu": 10000}"#,
            400,
            "MTU 10000",
        ),
        (
            "POST",
            "/v1/vswitches",
            r#"{"name": "a/b"}"#,
            400,
            "'/' is not allowed",
        ),
        (
            "POST",
            "/v1/vswitches",
            r#"{"name": "sw0"}"#,
            409,
            "already exists",
        ),
        (
            "POST",
            "/v1/vswitches",
            r#"{"name": "x", "mtu": -1}"#,
            400,
            "mtu",
        ),
        (
            "POST",
            "/v1/portgroups",
            r#"{"name": "p", "vswitch": "sw0", "vlan": 4096}"#,
            400,
            "VLAN 4096",
        ),
        (
            "POST",
            "/v1/portgroups",
            r#"{"name": "p", "vswitch": "nope"}"#,
            404,
            "no vSwitch named 'nope'",
        ),
        (
            "POST",
            "/v1/portgroups",
            r#"{"name": "../p", "vswitch": "sw0"}"#,
            400,
            "port group name",
        ),
        (
            "POST",
            "/v1/portgroups",
            r#"{"name": "p", "vswitch": "sw0", "shaping": {"average_bps": 0, "peak_bps": 1, "burst_bytes": 1}}"#,
            400,
            "above 0",
        ),
        (
            "POST",
            "/v1/vswitches/sw0/uplinks",
            r#"{"name": "tap/0", "kind": "tap"}"#,
            400,
            "not allowed",
        ),
        (
            "POST",
            "/v1/vswitches/sw0/uplinks",
            r#"{"name": "t0", "kind": "wire"}"#,
            400,
            "unknown variant",
        ),
        (
            "POST",
            "/v1/vswitches/sw0/uplinks",
            r#"{"name": "a-very-long-name0", "kind": "tap"}"#,
            400,
            "at most 15",
        ),
        (
            "PATCH",
            "/v1/vswitches/sw0",
            r#"{"teaming": {"active": ["a"], "standby": ["a"]}}"#,
            400,
            "listed twice",
        ),
        (
            "PATCH",
            "/v1/portgroups/nope",
            r#"{"vlan": 1}"#,
            404,
            "no port group named 'nope'",
        ),
        (
            "DELETE",
            "/v1/vswitches/sw0/uplinks/nope",
            "",
            404,
            "no uplink named 'nope'",
        ),
    ] {
        let (got, msg) = send(m, p, body);
        assert_eq!(got, status, "{m} {p} {body}: {msg}");
        assert!(msg.contains(says), "{m} {p} {body}: {msg}");
    }
    // A vSwitch with port groups cannot be removed.
    assert_eq!(
        send(
            "POST",
            "/v1/portgroups",
            r#"{"name": "p", "vswitch": "sw0", "vlan": 4095}"#
        )
        .0,
        201
    );
    let (got, msg) = send("DELETE", "/v1/vswitches/sw0", "");
    assert_eq!((got, msg.contains("port groups (p)")), (409, true), "{msg}");
}

/// The limits in the document are the server's (validate.rs, vmk-machine's layout, the API
/// and network constants), so generated clients and fuzzers refuse what the server refuses.
#[test]
fn the_document_states_the_servers_limits() {
    use vmk_host::validate::{APPEND_MAX, MAX_CPUS, SERIAL_MAX, SHARES_MAX};
    use vmk_machine::layout::{MAX_RAM, MIN_RAM, VIRTIO_SLOTS};
    let doc = doc();
    let s = &doc["components"]["schemas"];
    let vd = &s["VmDefinition"]["properties"];
    assert_eq!(vd["cpus"]["minimum"], 1);
    assert_eq!(vd["cpus"]["maximum"], MAX_CPUS);
    assert_eq!(vd["memory"]["oneOf"][0]["minimum"], MIN_RAM);
    assert_eq!(vd["memory"]["oneOf"][0]["maximum"], MAX_RAM);
    assert_eq!(vd["disk"]["maxItems"], VIRTIO_SLOTS);
    assert_eq!(vd["nic"]["maxItems"], VIRTIO_SLOTS);
    assert_eq!(s["Boot"]["properties"]["append"]["maxLength"], APPEND_MAX);
    assert_eq!(
        s["DiskDef"]["properties"]["serial"]["maxLength"],
        SERIAL_MAX
    );
    assert_eq!(s["Shares"]["oneOf"][1]["minimum"], 1);
    assert_eq!(s["Shares"]["oneOf"][1]["maximum"], SHARES_MAX);
    assert_eq!(
        s["StopRequest"]["properties"]["timeout_secs"]["maximum"],
        vmk_api::model::STOP_TIMEOUT_MAX_SECS
    );

    // Every name has validate_name's pattern and length, every interface name
    // check_ifname's.
    let name_pattern = format!("^[A-Za-z0-9_][A-Za-z0-9._-]{{0,{}}}$", NAME_MAX - 1);
    let if_pattern = format!("^[A-Za-z0-9_][A-Za-z0-9._-]{{0,{}}}$", IFNAME_MAX - 1);
    let mut names = vec![
        vd["name"].clone(),
        s["NicDef"]["properties"]["portgroup"].clone(),
        s["VSwitchDef"]["properties"]["name"].clone(),
        s["PortGroupDef"]["properties"]["name"].clone(),
        s["PortGroupDef"]["properties"]["vswitch"].clone(),
    ];
    let mut ifnames = vec![
        s["UplinkSpec"]["properties"]["name"].clone(),
        s["TeamingDef"]["properties"]["active"]["items"].clone(),
        s["TeamingDef"]["properties"]["standby"]["items"].clone(),
    ];
    for (_, item) in doc["paths"].as_object().unwrap() {
        for p in item["parameters"].as_array().into_iter().flatten() {
            match p["name"].as_str().unwrap() {
                "uplink" => ifnames.push(p["schema"].clone()),
                _ => names.push(p["schema"].clone()),
            }
        }
    }
    for (schemas, pattern, max) in [
        (names, &name_pattern, NAME_MAX),
        (ifnames, &if_pattern, IFNAME_MAX),
    ] {
        for n in schemas {
            assert_eq!(n["pattern"], pattern.as_str(), "{n}");
            assert_eq!(n["minLength"], 1, "{n}");
            assert_eq!(n["maxLength"], max, "{n}");
        }
    }
    // The pattern, spelled out, is what validate_name checks.
    let pattern_says = |n: &str| {
        let class = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        let first = n.chars().next();
        first.is_some_and(|c| class(c) && c != '.' && c != '-')
            && n.chars().all(class)
            && n.len() <= NAME_MAX
    };
    let long = "a".repeat(NAME_MAX);
    let too_long = "a".repeat(NAME_MAX + 1);
    for n in [
        "web1", "_x", "A.b-c_d", "9", "", ".x", "-x", "a b", "a/b", "é", &long, &too_long,
    ] {
        assert_eq!(validate_name("VM", n).is_ok(), pattern_says(n), "{n:?}");
    }

    // Boot's oneOf is the server's rule: exactly one of image and kernel, initrd only with
    // a kernel.
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image");
    std::fs::create_dir(&image).unwrap();
    for f in [
        vmk_host::machine::IMAGE_KERNEL,
        vmk_host::machine::IMAGE_INITRD,
    ] {
        std::fs::write(image.join(f), b"x").unwrap();
    }
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let limits = vmk_host::validate::HostLimits {
        cpus: 2,
        memory: 1 << 30,
        test_hooks: true,
    };
    for (img, kernel, initrd) in (0..8).map(|i| (i & 1 != 0, i & 2 != 0, i & 4 != 0)) {
        let boot = Boot {
            image: img.then(|| image.clone()),
            kernel: kernel.then(|| file.clone()),
            initrd: initrd.then(|| file.clone()),
            append: None,
        };
        let v = serde_json::to_value(&boot).unwrap();
        let alts = s["Boot"]["oneOf"].as_array().unwrap();
        let documented = alts.iter().filter(|a| holds(a, &v)).count() == 1;
        let mut d = minimal_def("b");
        d.boot = boot;
        let server = vmk_host::validate::validate_definition(&d, &limits);
        assert_eq!(documented, server.is_ok(), "{v}: {server:?}");
    }
}

/// Every `description` in the document, with its JSON path.
fn descriptions(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("description" | "summary", Value::String(d)) => {
                        out.push((format!("{at}/{k}"), d.clone()))
                    }
                    _ => descriptions(x, &format!("{at}/{k}"), out),
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                descriptions(x, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The document describes what the server does today: NICs are attached to their port
/// group's vSwitch when the VM runs (no leftover "stored, not yet attached" from before the
/// network existed).
#[test]
fn nics_are_described_as_attached() {
    let doc = doc();
    let mut all = Vec::new();
    descriptions(&doc, "", &mut all);
    for (at, d) in &all {
        let l = d.to_lowercase();
        assert!(
            !l.contains("not yet attached") && !l.contains("placeholder"),
            "{at}: {d}"
        );
    }
    let nic = doc["components"]["schemas"]["NicDef"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        nic.contains("attached") && nic.contains("vSwitch") && nic.contains("while the VM runs"),
        "{nic}"
    );
}

/// Resource settings are described as what they are today: stored, not enforced.
#[test]
fn resources_are_described_as_not_enforced_yet() {
    let doc = doc();
    let r = doc["components"]["schemas"]["Resources"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(r.contains("not enforced yet"), "{r}");
}
