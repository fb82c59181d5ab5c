//! The wire API's compatibility rules (docs/deploy.md, "Upgrades and the wire API"), held:
//!
//! 1. Fields and enum values are only added: none is renumbered, retyped, renamed, moved in or
//!    out of a `oneof`, or removed without `reserved`. `proto/wire-v1.fields` lists every field
//!    of package `harvest.v1` as released; this test fails when the .proto files disagree with it
//!    (and, for a new field, says which line to add).
//! 2. A message an older peer encoded still decodes, field for field: frozen encodings of an
//!    agent's `Register` and a scheduler's `CreateExecutor`, made by this version, are decoded
//!    by every later one.
//! 3. Unknown fields are skipped: a message from a newer peer, with fields this version does not
//!    know, decodes to what this version knows of it.

use std::collections::BTreeMap;
use std::path::Path;

use harvest_proto::v1;
use prost::Message;

const PROTOS: [&str; 2] = [
    "proto/harvest/v1/node.proto",
    "proto/harvest/v1/scheduler.proto",
];
const LOCK: &str = "wire-v1.fields";

/// `Message.field` (or `Enum.VALUE`) -> `number type [oneof name]`, and the reserved numbers of
/// each message, from the .proto text.
fn fields(text: &str) -> (BTreeMap<String, String>, Vec<(String, u32)>) {
    let mut out = BTreeMap::new();
    let mut reserved = Vec::new();
    // (kind, name) of the open blocks: message, enum, oneof, service.
    let mut stack: Vec<(String, String)> = Vec::new();
    for raw in text.lines() {
        let line = raw.split("//").next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        if let Some(head) = line.strip_suffix('{') {
            let mut words = head.split_whitespace();
            let kind = words.next().unwrap_or_default().to_owned();
            let name = words.next().unwrap_or_default().to_owned();
            stack.push((kind, name));
            continue;
        }
        if line == "}" {
            stack.pop();
            continue;
        }
        let Some((kind, _)) = stack.last() else {
            continue;
        };
        let owner: Vec<&str> = stack
            .iter()
            .filter(|(k, _)| k == "message" || k == "enum")
            .map(|(_, n)| n.as_str())
            .collect();
        let owner = owner.join(".");
        if let Some(list) = line.strip_prefix("reserved ") {
            for n in list.trim_end_matches(';').split(',') {
                if let Ok(n) = n.trim().parse() {
                    reserved.push((owner.clone(), n));
                }
            }
            continue;
        }
        let Some((lhs, rhs)) = line.trim_end_matches(';').split_once('=') else {
            continue;
        };
        let number = rhs.split_whitespace().next().unwrap_or_default();
        let words: Vec<&str> = lhs.split_whitespace().collect();
        match kind.as_str() {
            "enum" => {
                out.insert(format!("{owner}.{}", words[0]), number.to_owned());
            }
            "message" | "oneof" => {
                let (name, ty) = words.split_last().unwrap();
                let mut value = format!("{number} {}", ty.join(" "));
                if kind == "oneof" {
                    value.push_str(&format!(" oneof {}", stack.last().unwrap().1));
                }
                out.insert(format!("{owner}.{name}"), value);
            }
            _ => {}
        }
    }
    (out, reserved)
}

#[test]
fn fields_are_only_ever_added() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut current = BTreeMap::new();
    let mut reserved = Vec::new();
    for proto in PROTOS {
        let text = std::fs::read_to_string(dir.join(proto)).unwrap();
        let (f, r) = fields(&text);
        current.extend(f);
        reserved.extend(r);
    }
    assert!(
        current.len() > 100,
        "the parser found only {} fields",
        current.len()
    );
    let locked: BTreeMap<String, String> = std::fs::read_to_string(dir.join(LOCK))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once(" = ")
                .expect("a line is `Message.field = number type`");
            (k.to_owned(), v.to_owned())
        })
        .collect();

    let mut broken = Vec::new();
    for (key, was) in &locked {
        match current.get(key) {
            Some(now) if now == was => {}
            Some(now) => broken.push(format!("{key}: was `{was}`, is now `{now}`")),
            None => {
                let (message, _) = key.rsplit_once('.').unwrap();
                let number: u32 = was.split_whitespace().next().unwrap().parse().unwrap();
                let is_enum = !was.contains(' ');
                if is_enum || !reserved.contains(&(message.to_owned(), number)) {
                    broken.push(format!(
                        "{key} ({was}) is gone without `reserved {number};` in {message}"
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "these changes break older agents, schedulers or clients (a field's number and type \
         are its identity on the wire; add a new field instead):\n  {}",
        broken.join("\n  ")
    );
    let added: Vec<String> = current
        .iter()
        .filter(|(k, _)| !locked.contains_key(*k))
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    assert!(
        added.is_empty(),
        "new fields: append them to proto/{LOCK} (a new field's default, zero or empty, must \
         mean what an older peer that never sends it means):\n{}",
        added.join("\n")
    );
}

/// A `Register` as this version's agent sends it (the hex of its encoding), with one executor.
const REGISTER_V0_1: &str = concat!(
    "0a026e311205302e312e301a410a076c656173652d3110e8071a0202032080022a0101320f313237",
    "2e302e302e313a34303030303880d095ffbc3140e8074a040102030450c0fc155a0472657131207d",
);

/// A `CreateExecutor` as this version's scheduler sends it.
const CREATE_EXECUTOR_V0_1: &str = concat!(
    "0a076c656173652d3210e90718e907200228800430013a11120f2f7368617265642f6c6962662e73",
    "6f421208ffffffffffffffffff011088271880804048c09fbaffbc3150e0a7125a20070707070707",
    "0707070707070707070707070707070707070707070707070707620472657132",
);

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// `..Default::default()` has no effect today; it keeps these builders compiling when a field is
// added (which the rules allow), so that the frozen encodings keep being checked.
#[allow(clippy::needless_update)]
fn register() -> v1::Register {
    v1::Register {
        node: "n1".into(),
        agent_version: "0.1.0".into(),
        executors: vec![v1::ExecutorInfo {
            lease_id: "lease-1".into(),
            uid: 1000,
            cpus: vec![2, 3],
            memory_mib: 256,
            gpus: vec![1],
            address: "127.0.0.1:40000".into(),
            expires_unix_ms: 1_700_000_000_000,
            gid: 1000,
            secret: vec![1, 2, 3, 4],
            idle_timeout_ms: 360_000,
            request_id: "req1".into(),
            // Fields added later keep their defaults: the frozen encoding has none of them.
            ..Default::default()
        }],
        heartbeat_ms: 125,
        ..Default::default()
    }
}

// `..Default::default()` has no effect today; it keeps these builders compiling when a field is
// added (which the rules allow), so that the frozen encodings keep being checked.
#[allow(clippy::needless_update)]
fn create_executor() -> v1::CreateExecutor {
    v1::CreateExecutor {
        lease_id: "lease-2".into(),
        uid: 1001,
        gid: 1001,
        cores: 2,
        memory_mib: 512,
        gpus: 1,
        library: Some(v1::FunctionLibrary {
            source: Some(v1::function_library::Source::Path("/shared/libf.so".into())),
        }),
        options: Some(v1::ExecutorOptions {
            hot_window_us: -1,
            default_timeout_ms: 5000,
            max_output_bytes: 1 << 20,
        }),
        expires_unix_ms: 1_700_000_600_000,
        idle_timeout_ms: 300_000,
        secret: vec![7; 32],
        request_id: "req2".into(),
        ..Default::default()
    }
}

#[test]
fn an_older_agents_register_still_decodes() {
    let frozen = unhex(REGISTER_V0_1);
    assert_eq!(
        v1::Register::decode(frozen.as_slice()).unwrap(),
        register(),
        "this version encodes it as {}",
        hex(&register().encode_to_vec())
    );
}

#[test]
fn an_older_schedulers_create_executor_still_decodes() {
    let frozen = unhex(CREATE_EXECUTOR_V0_1);
    assert_eq!(
        v1::CreateExecutor::decode(frozen.as_slice()).unwrap(),
        create_executor(),
        "this version encodes it as {}",
        hex(&create_executor().encode_to_vec())
    );
}

#[test]
fn unknown_fields_from_a_newer_peer_are_skipped() {
    let mut bytes = unhex(REGISTER_V0_1);
    // Field 900 as a varint, a string and a nested message: what a newer agent might add.
    for (tag, payload) in [
        (900u32 << 3, vec![0x2a]),
        ((901 << 3) | 2, vec![3, b'n', b'e', b'w']),
        ((902 << 3) | 2, vec![2, 0x08, 0x01]),
    ] {
        prost::encoding::encode_varint(u64::from(tag), &mut bytes);
        bytes.extend(payload);
    }
    assert_eq!(v1::Register::decode(bytes.as_slice()).unwrap(), register());
}
