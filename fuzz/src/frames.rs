//! The two wire formats: invocation frames (client <-> executor, `harvest_core::invoke`) and the
//! SPANK plugin's JSON lines to harvestd (`harvest_core::step`), applied to a ledger.

use harvest_agent::discover::{FakeGpus, FakeMemory, FakeTopology, Hardware, discover};
use harvest_agent::ledger::{Ledger, Reserve};
use harvest_agent::query::{QueryReply, QueryRequest};
use harvest_core::CpuSet;
use harvest_core::cpuset::MAX_CPU_ID;
use harvest_core::invoke::{self, ErrorCode, Frame, LEN_BYTES};
use harvest_core::step::{self, AgentReply, FrameError, MAX_MESSAGE_BYTES, PluginMessage};

/// Encodes a decoded frame again (with its length prefix), as its sender would have.
fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    match *frame {
        Frame::Invoke {
            id,
            timeout_ms,
            function,
            input,
        } => invoke::encode_invoke(&mut out, id, timeout_ms, function, input),
        Frame::Result { id, output } => invoke::encode_result(&mut out, id, output)
            .expect("a decoded output fits a frame's length"),
        Frame::Error { id, code, message } => invoke::encode_error(&mut out, id, code, message),
        Frame::Challenge { nonce } => invoke::encode_challenge(&mut out, &nonce),
        Frame::Auth { proof } => invoke::encode_auth(&mut out, &proof),
    }
    out
}

/// Splits `data` into a length prefix and a body as a stream reader would.
fn body_of(framed: &[u8]) -> &[u8] {
    let (prefix, body) = framed.split_at(LEN_BYTES);
    let len = invoke::body_len(prefix.try_into().expect("4 bytes"));
    assert_eq!(len, body.len(), "the length prefix covers the body exactly");
    body
}

/// Any bytes as a frame body: decoding never panics, and what decodes encodes back to a body
/// that decodes to the same frame. Then the same bytes as the fields of a frame: encoding them
/// and decoding gives them back, whatever pad the sender chose.
pub fn invoke_frame(data: &[u8]) {
    if let Ok(frame) = invoke::decode(data) {
        let again = encode(&frame);
        match (&frame, invoke::decode(body_of(&again))) {
            // A sender cuts ERROR messages at invoke::MAX_MESSAGE_BYTES (on a char boundary).
            (Frame::Error { message, .. }, Ok(Frame::Error { message: cut, .. }))
                if message.len() > invoke::MAX_MESSAGE_BYTES =>
            {
                assert!(message.starts_with(cut) && cut.len() <= invoke::MAX_MESSAGE_BYTES);
            }
            (_, decoded) => assert_eq!(decoded, Ok(frame)),
        }
    } else if let Err(e) = invoke::decode(data) {
        assert!(!e.to_string().is_empty());
    }

    // The bytes as fields: id, timeout, pad, kind, then a name and a payload split at `cut`.
    let Some((head, rest)) = data.split_first_chunk::<16>() else {
        return;
    };
    let id = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    let timeout_ms = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    let pad = head[12];
    let kind = head[13] % 5;
    let cut = usize::from(u16::from_le_bytes([head[14], head[15]])).min(rest.len());
    let (name, payload) = rest.split_at(cut);
    let name = String::from_utf8_lossy(name);
    let mut out = Vec::new();
    let expected = match kind {
        0 => {
            invoke::encode_invoke_header_padded(
                &mut out,
                id,
                timeout_ms,
                &name,
                payload.len(),
                pad,
            );
            out.extend_from_slice(payload);
            Frame::Invoke {
                id,
                timeout_ms,
                function: &name,
                input: payload,
            }
        }
        1 => {
            invoke::encode_result(&mut out, id, payload).expect("fuzz inputs fit a frame");
            Frame::Result {
                id,
                output: payload,
            }
        }
        3 | 4 => {
            // CHALLENGE and AUTH: 32 bytes of the payload (zeros where it is shorter).
            let mut bytes = [0u8; 32];
            let n = payload.len().min(32);
            bytes[..n].copy_from_slice(&payload[..n]);
            if kind == 3 {
                invoke::encode_challenge(&mut out, &bytes);
                Frame::Challenge { nonce: bytes }
            } else {
                invoke::encode_auth(&mut out, &bytes);
                Frame::Auth { proof: bytes }
            }
        }
        _ => {
            let code = ErrorCode::from_u8(pad % 9 + 1).expect("codes 1..=9 exist");
            invoke::encode_error(&mut out, id, code, &name);
            // The sender cuts a long message at MAX_MESSAGE_BYTES, on a char boundary.
            let mut cut = name.len().min(invoke::MAX_MESSAGE_BYTES);
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            Frame::Error {
                id,
                code,
                message: &name[..cut],
            }
        }
    };
    assert_eq!(invoke::decode(body_of(&out)), Ok(expected));
}

/// A node of 1 socket x 8 cores x 2 threads (PUs 0-15), 16000 MiB and 2 GPUs.
fn fake_node() -> Hardware {
    discover(
        &FakeTopology::uniform(1, 8, 2),
        &FakeMemory(16_000),
        &FakeGpus::count(2),
    )
    .expect("a fake node with CPUs")
}

/// Any bytes as lines from the SPANK plugin (and as the replies both sides read): decoding
/// never panics; a decoded message encodes back to the same message; applied in order to a
/// ledger, the messages leave a node view whose states add up.
pub fn plugin_message(data: &[u8]) {
    let hw = fake_node();
    let mut ledger = Ledger::new("n1");
    for (now_ms, line) in (0u64..).zip(data.split(|&b| b == b'\n')) {
        // What the plugin reads back, and what `harvestd status` reads: no panic.
        let _ = step::decode::<AgentReply>(line);
        let _ = step::decode::<QueryRequest>(line);
        let _ = step::decode::<QueryReply>(line);
        let msg = match step::decode::<PluginMessage>(line) {
            Ok(msg) => msg,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                continue;
            }
        };
        match step::encode(&msg) {
            Ok(bytes) => assert_eq!(step::decode::<PluginMessage>(&bytes).unwrap(), msg),
            // Only a message near the limit may grow past it (an omitted field written as null).
            Err(FrameError::TooLarge(n)) => assert!(n > MAX_MESSAGE_BYTES && line.len() > 1024),
            Err(e) => panic!("a decoded message does not encode: {e}"),
        }
        match &msg {
            PluginMessage::StepStart(a) => {
                check_cpus(&a.cpus);
                ledger.step_start(a, now_ms);
            }
            PluginMessage::StepEnd {
                job_id, step_id, ..
            } => {
                ledger.step_end(*job_id, *step_id);
            }
            PluginMessage::JobEnd { job_id, .. } => {
                ledger.job_end(*job_id);
            }
        }
        let view = ledger.view(
            &hw,
            Reserve {
                cores: 1,
                memory_mib: 1000,
            },
        );
        let cpus = &view.cpus;
        assert!(cpus.batch.is_subset(&cpus.total), "{view:?}");
        assert!(cpus.idle.is_subset(&cpus.total), "{view:?}");
        assert!(cpus.idle.is_disjoint(&cpus.batch), "{view:?}");
        let mem = &view.memory_mib;
        assert!(
            mem.batch <= mem.total && mem.idle <= mem.total - mem.batch,
            "{view:?}"
        );
        assert!(view.gpus.idle.iter().all(|g| !view.gpus.batch.contains(g)));
    }
}

/// A CPU set from a message is within the text form's bound, prints, and reads back.
fn check_cpus(cpus: &CpuSet) {
    assert!(cpus.iter().all(|c| c <= MAX_CPU_ID), "{cpus:?}");
    assert_eq!(&CpuSet::parse_list(&cpus.to_list()).unwrap(), cpus);
}
