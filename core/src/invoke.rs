//! The invocation wire format: client <-> executor, no scheduler hop.
//!
//! Length-prefixed binary frames over a byte stream (TCP today, RDMA later behind a transport
//! trait). Every frame is `u32 LE length` of what follows, then a one-byte kind and a `u64 LE`
//! invocation id that pairs a request with its answer, so several invocations can be in flight on
//! one connection:
//!
//! ```text
//! CHALLENGE (executor -> client): kind=4 | id=0 | 32-byte nonce
//! AUTH      (client -> executor): kind=5 | id=0 | 32-byte proof
//! INVOKE    (client -> executor): kind=1 | id | u32 timeout_ms (0: executor default)
//!                                 | u16 function-name length | u8 pad | name (UTF-8)
//!                                 | pad zero bytes | input bytes
//! RESULT    (executor -> client): kind=2 | id | u8 pad | pad zero bytes | output bytes
//! ERROR     (executor -> client): kind=3 | id | u8 ErrorCode | message (UTF-8)
//! ```
//!
//! **The handshake.** Right after accepting a connection the executor sends a CHALLENGE with a
//! fresh random nonce. The client answers with an AUTH whose proof is
//! HMAC-SHA256(lease secret, `"harvest-invoke-v1"` || nonce) ([`auth::proof`]); it may send its
//! first INVOKE right behind it without waiting. On a good proof the connection goes on to
//! INVOKE/RESULT/ERROR frames; on a wrong one, anything else, or none within the executor's
//! handshake timeout (2 s by default), the executor answers ERROR id 0 with
//! [`ErrorCode::Unauthorized`] and closes. No frame of a client is served before a valid AUTH,
//! and the secret itself never crosses the wire. The executor checks the proof in its
//! supervisor, before it forks a worker for the connection, so an unauthenticated peer never
//! costs a process.
//!
//! **Memory operations.** An executor with a memory region (a memory lease) serves the reserved
//! names `harvest.mem.*` over these same frames; [`memory`] encodes and checks their inputs.
//!
//! An ERROR with id 0 concerns the whole connection (for example the executor is shutting down).
//! This module only encodes and decodes byte slices; reading and writing streams is the caller's.
//!
//! **Why the pad.** The kernel copies every payload twice (sender's buffer into the socket,
//! socket into the receiver's buffer), and on some CPUs (AMD Zen with FSRM, these machines)
//! `rep movsb` runs about 20 times slower when the destination sits 1 to 31 bytes past the
//! source modulo 64: 28 µs instead of 1.4 µs for 64 KiB. A sender therefore pads so that the
//! payload's offset in the stream has the same phase modulo [`ALIGN`] as its buffer in memory
//! (the socket's page fragments start aligned in a ping-pong), and the receiver reads frames
//! into [`ALIGN`]-aligned buffers. A decoder just skips the pad; any pad is valid.

pub mod auth;
pub mod memory;

use std::fmt;

/// Bytes in the length prefix.
pub const LEN_BYTES: usize = 4;
/// Bytes of kind + id that start every frame body.
pub const HEADER_BYTES: usize = 1 + 8;
/// The invocation id reserved for errors about the whole connection.
pub const CONNECTION_ID: u64 = 0;
/// The alignment payloads are padded to (a cache line).
pub const ALIGN: usize = 64;
/// Bytes of an INVOKE frame before its function name: prefix, kind, id, timeout, name length,
/// pad length.
pub const INVOKE_FIXED_BYTES: usize = LEN_BYTES + HEADER_BYTES + 4 + 2 + 1;
/// Bytes of the RESULT header [`result_header`] writes (prefix, kind, id, pad length, pad): the
/// output starts 32 bytes into the frame, so an output buffer at 32 modulo 64 is copied into the
/// socket in phase.
pub const RESULT_HEAD_BYTES: usize = 32;

/// Bytes of a whole CHALLENGE or AUTH frame (prefix, kind, id, nonce or proof).
pub const AUTH_FRAME_BYTES: usize = LEN_BYTES + HEADER_BYTES + auth::NONCE_BYTES;
/// The longest frame body the length prefix can describe.
pub const MAX_BODY_BYTES: usize = u32::MAX as usize;
/// The longest ERROR message sent: longer ones are cut (at a character boundary).
pub const MAX_MESSAGE_BYTES: usize = 4096;

const KIND_INVOKE: u8 = 1;
const KIND_RESULT: u8 = 2;
const KIND_ERROR: u8 = 3;
const KIND_CHALLENGE: u8 = 4;
const KIND_AUTH: u8 = 5;

/// Why an invocation failed, as the executor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorCode {
    /// The library has no function of that name.
    NoSuchFunction = 1,
    /// The function crashed: a signal killed the worker running it, or the function ended its
    /// worker (`exit`, `_exit`) before returning; the message says which signal or exit status.
    Crashed = 2,
    /// The function ran past its timeout and was killed.
    Timeout = 3,
    /// The function exceeded the lease's memory and the kernel killed it.
    OutOfMemory = 4,
    /// The function returned more bytes than its output buffer holds.
    OutputTooLarge = 5,
    /// The request was malformed.
    BadRequest = 6,
    /// The lease was revoked (reclaimed by a batch job, expired, ...); the message says why.
    LeaseRevoked = 7,
    /// The executor failed for a reason of its own.
    Internal = 8,
    /// The connection did not prove the lease secret (wrong or missing AUTH, or none in time):
    /// only the lease's owner may invoke its functions.
    Unauthorized = 9,
}

impl ErrorCode {
    pub fn from_u8(v: u8) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            1 => NoSuchFunction,
            2 => Crashed,
            3 => Timeout,
            4 => OutOfMemory,
            5 => OutputTooLarge,
            6 => BadRequest,
            7 => LeaseRevoked,
            8 => Internal,
            9 => Unauthorized,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoSuchFunction => "no such function",
            Self::Crashed => "function crashed",
            Self::Timeout => "function timed out",
            Self::OutOfMemory => "function ran out of memory",
            Self::OutputTooLarge => "function output too large",
            Self::BadRequest => "bad request",
            Self::LeaseRevoked => "lease revoked",
            Self::Internal => "executor error",
            Self::Unauthorized => "unauthorized",
        })
    }
}

/// A decoded frame body (without the length prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Invoke {
        id: u64,
        timeout_ms: u32,
        function: &'a str,
        input: &'a [u8],
    },
    Result {
        id: u64,
        output: &'a [u8],
    },
    Error {
        id: u64,
        code: ErrorCode,
        message: &'a str,
    },
    Challenge {
        nonce: [u8; auth::NONCE_BYTES],
    },
    Auth {
        proof: [u8; auth::PROOF_BYTES],
    },
}

/// A frame body that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("unknown error code {0}")]
    Code(u8),
    #[error("function name or message is not valid UTF-8")]
    Utf8,
    #[error("a CHALLENGE or AUTH frame has a body of exactly {expected} bytes, not {got}")]
    AuthLength { expected: usize, got: usize },
}

/// A frame that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "an output of {len} bytes does not fit in one frame (at most {} bytes)",
        MAX_BODY_BYTES - (RESULT_HEAD_BYTES - LEN_BYTES)
    )]
    OutputTooLarge { len: usize },
}

/// Callers keep `body_len` within [`MAX_BODY_BYTES`].
fn header(out: &mut Vec<u8>, body_len: usize, kind: u8, id: u64) {
    let len = u32::try_from(body_len).expect("the caller bounds the frame to u32");
    out.reserve(LEN_BYTES + body_len);
    out.extend_from_slice(&len.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&id.to_le_bytes());
}

/// Appends an INVOKE frame (with its length prefix) to `out`.
///
/// # Panics
/// If the function name is longer than `u16::MAX` bytes or the frame longer than `u32::MAX`; the
/// client library checks both before calling.
pub fn encode_invoke(out: &mut Vec<u8>, id: u64, timeout_ms: u32, function: &str, input: &[u8]) {
    encode_invoke_header(out, id, timeout_ms, function, input.len());
    out.extend_from_slice(input);
}

/// The pad that puts an INVOKE's input at `phase` modulo [`ALIGN`] from the frame's start.
pub fn invoke_pad(function: &str, phase: usize) -> u8 {
    let fixed = INVOKE_FIXED_BYTES + function.len();
    ((phase % ALIGN + ALIGN - fixed % ALIGN) % ALIGN) as u8
}

/// Appends everything of an INVOKE frame but its `input_len` input bytes, which the caller sends
/// right after (with `writev`, say, to avoid copying a large input).
///
/// # Panics
/// As [`encode_invoke`].
pub fn encode_invoke_header(
    out: &mut Vec<u8>,
    id: u64,
    timeout_ms: u32,
    function: &str,
    input_len: usize,
) {
    encode_invoke_header_padded(out, id, timeout_ms, function, input_len, 0);
}

/// [`encode_invoke_header`] with `pad` zero bytes between the name and the input (see
/// [`invoke_pad`]).
pub fn encode_invoke_header_padded(
    out: &mut Vec<u8>,
    id: u64,
    timeout_ms: u32,
    function: &str,
    input_len: usize,
    pad: u8,
) {
    let name_len = u16::try_from(function.len()).expect("function name fits in u16");
    let body = HEADER_BYTES + 4 + 2 + 1 + function.len() + usize::from(pad) + input_len;
    assert!(u32::try_from(body).is_ok(), "frame fits in u32");
    header(out, body, KIND_INVOKE, id);
    out.extend_from_slice(&timeout_ms.to_le_bytes());
    out.extend_from_slice(&name_len.to_le_bytes());
    out.push(pad);
    out.extend_from_slice(function.as_bytes());
    out.resize(out.len() + usize::from(pad), 0);
}

/// The kind byte of a RESULT frame, for readers that split the header from the output.
pub const RESULT_KIND: u8 = KIND_RESULT;

/// The header of a RESULT frame whose `output_len` output bytes follow: [`RESULT_HEAD_BYTES`]
/// bytes (prefix, kind, id, pad length, pad). The executor uses this to answer without copying
/// the function's output buffer. An output too long for the `u32` length prefix is an error
/// (never a length that wraps around).
pub fn result_header(id: u64, output_len: usize) -> Result<[u8; RESULT_HEAD_BYTES], EncodeError> {
    let body = (RESULT_HEAD_BYTES - LEN_BYTES)
        .checked_add(output_len)
        .and_then(|b| u32::try_from(b).ok())
        .ok_or(EncodeError::OutputTooLarge { len: output_len })?;
    let mut h = [0u8; RESULT_HEAD_BYTES];
    h[..4].copy_from_slice(&body.to_le_bytes());
    h[4] = KIND_RESULT;
    h[5..13].copy_from_slice(&id.to_le_bytes());
    h[13] = (RESULT_HEAD_BYTES - LEN_BYTES - HEADER_BYTES - 1) as u8;
    Ok(h)
}

/// Appends a RESULT frame to `out`.
pub fn encode_result(out: &mut Vec<u8>, id: u64, output: &[u8]) -> Result<(), EncodeError> {
    out.extend_from_slice(&result_header(id, output.len())?);
    out.extend_from_slice(output);
    Ok(())
}

/// Appends an ERROR frame to `out`; a message past [`MAX_MESSAGE_BYTES`] is cut there.
pub fn encode_error(out: &mut Vec<u8>, id: u64, code: ErrorCode, message: &str) {
    let mut cut = message.len().min(MAX_MESSAGE_BYTES);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let message = &message[..cut];
    header(out, HEADER_BYTES + 1 + message.len(), KIND_ERROR, id);
    out.push(code as u8);
    out.extend_from_slice(message.as_bytes());
}

/// Appends a CHALLENGE frame carrying `nonce` to `out`.
pub fn encode_challenge(out: &mut Vec<u8>, nonce: &[u8; auth::NONCE_BYTES]) {
    header(
        out,
        HEADER_BYTES + nonce.len(),
        KIND_CHALLENGE,
        CONNECTION_ID,
    );
    out.extend_from_slice(nonce);
}

/// Appends an AUTH frame carrying `proof` to `out`.
pub fn encode_auth(out: &mut Vec<u8>, proof: &[u8; auth::PROOF_BYTES]) {
    header(out, HEADER_BYTES + proof.len(), KIND_AUTH, CONNECTION_ID);
    out.extend_from_slice(proof);
}

/// Reads the body length from a 4-byte prefix.
pub fn body_len(prefix: [u8; LEN_BYTES]) -> usize {
    u32::from_le_bytes(prefix) as usize
}

/// Decodes a frame body (what follows the length prefix).
pub fn decode(body: &[u8]) -> Result<Frame<'_>, DecodeError> {
    if body.len() < HEADER_BYTES {
        return Err(DecodeError::Short(body.len()));
    }
    let kind = body[0];
    let id = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
    let rest = &body[HEADER_BYTES..];
    match kind {
        KIND_INVOKE => {
            if rest.len() < 7 {
                return Err(DecodeError::Short(body.len()));
            }
            let timeout_ms = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
            let name_len = u16::from_le_bytes(rest[4..6].try_into().expect("2 bytes")) as usize;
            let pad = usize::from(rest[6]);
            let rest = &rest[7..];
            if rest.len() < name_len + pad {
                return Err(DecodeError::Short(body.len()));
            }
            let function = std::str::from_utf8(&rest[..name_len]).map_err(|_| DecodeError::Utf8)?;
            Ok(Frame::Invoke {
                id,
                timeout_ms,
                function,
                input: &rest[name_len + pad..],
            })
        }
        KIND_RESULT => {
            let (&pad, rest) = rest.split_first().ok_or(DecodeError::Short(body.len()))?;
            let output = rest
                .get(usize::from(pad)..)
                .ok_or(DecodeError::Short(body.len()))?;
            Ok(Frame::Result { id, output })
        }
        KIND_ERROR => {
            let (&code, msg) = rest.split_first().ok_or(DecodeError::Short(body.len()))?;
            let code = ErrorCode::from_u8(code).ok_or(DecodeError::Code(code))?;
            let message = std::str::from_utf8(msg).map_err(|_| DecodeError::Utf8)?;
            Ok(Frame::Error { id, code, message })
        }
        KIND_CHALLENGE | KIND_AUTH => {
            let bytes: [u8; auth::NONCE_BYTES] =
                rest.try_into().map_err(|_| DecodeError::AuthLength {
                    expected: HEADER_BYTES + auth::NONCE_BYTES,
                    got: body.len(),
                })?;
            Ok(if kind == KIND_CHALLENGE {
                Frame::Challenge { nonce: bytes }
            } else {
                Frame::Auth { proof: bytes }
            })
        }
        k => Err(DecodeError::Kind(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(buf: &[u8]) -> &[u8] {
        let len = body_len(buf[..4].try_into().unwrap());
        assert_eq!(buf.len(), 4 + len, "length prefix covers the rest exactly");
        &buf[4..]
    }

    #[test]
    fn invoke_round_trip() {
        let mut buf = Vec::new();
        encode_invoke(&mut buf, 7, 500, "echo", b"hello");
        assert_eq!(
            decode(body(&buf)).unwrap(),
            Frame::Invoke {
                id: 7,
                timeout_ms: 500,
                function: "echo",
                input: b"hello"
            }
        );
        let mut empty = Vec::new();
        encode_invoke(&mut empty, 1, 0, "f", b"");
        assert_eq!(
            decode(body(&empty)).unwrap(),
            Frame::Invoke {
                id: 1,
                timeout_ms: 0,
                function: "f",
                input: b""
            }
        );
    }

    #[test]
    fn result_and_error_round_trip() {
        let mut buf = Vec::new();
        encode_result(&mut buf, u64::MAX, &[1, 2, 3]).unwrap();
        assert_eq!(
            decode(body(&buf)).unwrap(),
            Frame::Result {
                id: u64::MAX,
                output: &[1, 2, 3]
            }
        );
        let mut e = Vec::new();
        encode_error(&mut e, 3, ErrorCode::Timeout, "ran past 500ms");
        assert_eq!(
            decode(body(&e)).unwrap(),
            Frame::Error {
                id: 3,
                code: ErrorCode::Timeout,
                message: "ran past 500ms"
            }
        );
        for c in 1..=9 {
            assert_eq!(ErrorCode::from_u8(c).unwrap() as u8, c);
        }
        assert!(ErrorCode::from_u8(0).is_none());
    }

    #[test]
    fn pads_put_payloads_in_phase() {
        for name in ["f", "noop", "a_longer_function_name"] {
            for phase in [0, 13, 32, 63] {
                let pad = invoke_pad(name, phase);
                let mut buf = Vec::new();
                encode_invoke_header_padded(&mut buf, 1, 0, name, 3, pad);
                assert_eq!(buf.len() % ALIGN, phase, "{name} {phase}");
                buf.extend_from_slice(b"abc");
                let Frame::Invoke {
                    function, input, ..
                } = decode(body(&buf)).unwrap()
                else {
                    panic!()
                };
                assert_eq!((function, input), (name, &b"abc"[..]));
            }
        }
        let h = result_header(5, 3).unwrap();
        let mut buf = h.to_vec();
        buf.extend_from_slice(b"xyz");
        assert_eq!(
            decode(body(&buf)).unwrap(),
            Frame::Result {
                id: 5,
                output: b"xyz"
            }
        );
        // A pad longer than the frame is malformed, not a panic.
        let mut bad = result_header(5, 0).unwrap();
        bad[13] = 200;
        assert!(matches!(decode(body(&bad)), Err(DecodeError::Short(_))));
    }

    #[test]
    fn rejects_malformed_bodies() {
        assert_eq!(decode(&[1, 0, 0]), Err(DecodeError::Short(3)));
        assert_eq!(
            decode(&[9, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::Kind(9))
        );
        let mut buf = Vec::new();
        encode_invoke(&mut buf, 1, 0, "echo", b"");
        // Claim a longer name than the body holds.
        let mut b = body(&buf).to_vec();
        b[13] = 200;
        assert!(matches!(decode(&b), Err(DecodeError::Short(_))));
        let mut e = Vec::new();
        encode_error(&mut e, 1, ErrorCode::Crashed, "x");
        let mut b = body(&e).to_vec();
        b[9] = 99;
        assert_eq!(decode(&b), Err(DecodeError::Code(99)));
    }

    #[test]
    fn result_lengths_that_do_not_fit_u32_are_errors_not_wrapped() {
        // The largest output whose body still fits the u32 prefix, and one byte more.
        let fits = MAX_BODY_BYTES - (RESULT_HEAD_BYTES - LEN_BYTES);
        let h = result_header(1, fits).unwrap();
        assert_eq!(body_len(h[..4].try_into().unwrap()), MAX_BODY_BYTES);
        assert_eq!(
            result_header(1, fits + 1),
            Err(EncodeError::OutputTooLarge { len: fits + 1 })
        );
        // Near 4 GiB + a little, which wrapped to a tiny length before.
        assert!(result_header(1, 1 << 32).is_err());
        assert!(result_header(1, usize::MAX).is_err());
    }

    #[test]
    fn long_error_messages_are_cut_at_a_character() {
        let mut e = Vec::new();
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        encode_error(&mut e, 1, ErrorCode::Internal, &long);
        let Frame::Error { message, .. } = decode(body(&e)).unwrap() else {
            panic!()
        };
        assert!(message.len() <= MAX_MESSAGE_BYTES && message.len() >= MAX_MESSAGE_BYTES - 1);
    }

    #[test]
    fn challenge_and_auth_round_trip_and_must_be_exact() {
        let mut c = Vec::new();
        encode_challenge(&mut c, &[7; 32]);
        assert_eq!(c.len(), AUTH_FRAME_BYTES);
        assert_eq!(
            decode(body(&c)).unwrap(),
            Frame::Challenge { nonce: [7; 32] }
        );
        let mut a = Vec::new();
        encode_auth(&mut a, &[9; 32]);
        assert_eq!(a.len(), AUTH_FRAME_BYTES);
        assert_eq!(decode(body(&a)).unwrap(), Frame::Auth { proof: [9; 32] });
        let short = &body(&a)[..40];
        assert_eq!(
            decode(short),
            Err(DecodeError::AuthLength {
                expected: 41,
                got: 40
            })
        );
        assert_eq!(ErrorCode::from_u8(9), Some(ErrorCode::Unauthorized));
    }
}
