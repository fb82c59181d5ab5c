//! Memory leases' operations: reserved built-in function names over the ordinary INVOKE/RESULT
//! frames, and the pure encoding and checking of their inputs (no OS access).
//!
//! An executor started with a memory region (`harvest-executor --region SIZE`) serves these names
//! from it; user function names are C identifiers, so a name with a `.` never collides with one.
//! All integers are little-endian:
//!
//! ```text
//! harvest.mem.size    input: empty                               output: u64 region size
//! harvest.mem.read    input: u64 offset | u32 len                output: the len bytes
//! harvest.mem.write   input: u64 offset | data                   output: empty
//! harvest.mem.readv   input: u16 count | count x (u64 off, u32 len)
//!                                                                output: the ranges' bytes, in order
//! harvest.mem.writev  input: u16 count | count x (u64 off, u32 len) | data (the lens' sum exactly)
//!                                                                output: empty
//! ```
//!
//! [`MemOp::decode`] checks everything before the executor touches the region: every range lies
//! inside the region (with checked arithmetic: an offset near `u64::MAX` is refused, never
//! wrapped), at most [`MAX_RANGES`] ranges in one call, a read's total within the executor's
//! output limit, and a `writev`'s data exactly as long as its ranges say. Operations on one
//! connection run in order; between connections there is no ordering (as with RDMA).

use std::fmt;

use super::ErrorCode;

/// What every memory operation's name starts with.
pub const PREFIX: &str = "harvest.mem.";
/// The region's size in bytes.
pub const SIZE: &str = "harvest.mem.size";
/// One range's bytes.
pub const READ: &str = "harvest.mem.read";
/// Bytes written at an offset.
pub const WRITE: &str = "harvest.mem.write";
/// Several ranges' bytes, concatenated.
pub const READV: &str = "harvest.mem.readv";
/// Bytes scattered into several ranges.
pub const WRITEV: &str = "harvest.mem.writev";
/// Every operation, for messages.
pub const OPERATIONS: [&str; 5] = [SIZE, READ, WRITE, READV, WRITEV];

/// The most ranges one `readv` or `writev` carries.
pub const MAX_RANGES: usize = 1024;
/// Bytes of one encoded range (u64 offset, u32 len).
pub const RANGE_BYTES: usize = 8 + 4;
/// Bytes of a range list's count.
pub const COUNT_BYTES: usize = 2;
/// The longest range list: its count and [`MAX_RANGES`] ranges.
pub const MAX_LIST_BYTES: usize = COUNT_BYTES + MAX_RANGES * RANGE_BYTES;
/// The smallest region an executor maps (one page).
pub const MIN_REGION_BYTES: u64 = 4 << 10;
/// The largest region an executor maps (1 TiB).
pub const MAX_REGION_BYTES: u64 = 1 << 40;

/// Whether `function` names a memory operation (known or not): such names are never a library's.
pub fn is_memory_op(function: &str) -> bool {
    function.starts_with(PREFIX)
}

/// `len` bytes at `offset` of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub offset: u64,
    pub len: u32,
}

impl Range {
    /// One past the last byte; `None` when it would overflow `u64`.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(u64::from(self.len))
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes at offset {}", self.len, self.offset)
    }
}

/// A checked range list (from a `readv` or `writev` input): its ranges in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranges<'a> {
    /// `count` encoded ranges, [`RANGE_BYTES`] each.
    encoded: &'a [u8],
    /// The sum of their lens.
    total: u64,
}

impl<'a> Ranges<'a> {
    pub fn len(&self) -> usize {
        self.encoded.len() / RANGE_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    /// The sum of the ranges' lengths.
    pub fn total_len(&self) -> u64 {
        self.total
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Range> + 'a {
        self.encoded.chunks_exact(RANGE_BYTES).map(range_at)
    }
}

fn range_at(b: &[u8]) -> Range {
    Range {
        offset: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
        len: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
    }
}

/// A memory operation, checked against a region and the executor's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemOp<'a> {
    Size,
    Read(Range),
    Write {
        offset: u64,
        data: &'a [u8],
    },
    ReadV(Ranges<'a>),
    /// `data` is exactly the ranges' total length; the first range's bytes come first.
    WriteV {
        ranges: Ranges<'a>,
        data: &'a [u8],
    },
}

/// What a memory operation's caller got wrong (or a name that is no operation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    #[error(
        "no memory operation {0:?}: the operations are harvest.mem.size, harvest.mem.read, harvest.mem.write, harvest.mem.readv and harvest.mem.writev"
    )]
    UnknownOperation(String),
    #[error("{op} takes {expected}, not {got} bytes")]
    Malformed {
        op: &'static str,
        expected: &'static str,
        got: usize,
    },
    #[error(
        "{len} bytes at offset {offset} do not fit in the memory region of {region} bytes (offsets 0 to {region} exclusive)"
    )]
    OutOfRange { offset: u64, len: u64, region: u64 },
    #[error("{count} ranges in one call: at most {MAX_RANGES}")]
    TooManyRanges { count: usize },
    #[error(
        "a read of {len} bytes exceeds this executor's output limit of {max} bytes (--max-output): read in smaller pieces"
    )]
    ReadTooLarge { len: u64, max: u64 },
    #[error("the ranges of a writev add up to {ranges} bytes but {data} bytes of data follow them")]
    LengthMismatch { ranges: u64, data: u64 },
}

impl MemError {
    /// The error code an executor answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownOperation(_) => ErrorCode::NoSuchFunction,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// The bounds a memory operation is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The region's size in bytes.
    pub region: u64,
    /// The most bytes one read (or readv, in total) may return: the executor's output limit.
    pub max_read: u64,
}

impl Limits {
    fn check(&self, offset: u64, len: u64) -> Result<(), MemError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.region => Ok(()),
            _ => Err(MemError::OutOfRange {
                offset,
                len,
                region: self.region,
            }),
        }
    }

    fn check_read(&self, len: u64) -> Result<(), MemError> {
        if len > self.max_read {
            return Err(MemError::ReadTooLarge {
                len,
                max: self.max_read,
            });
        }
        Ok(())
    }
}

impl<'a> MemOp<'a> {
    /// Decodes and checks the input of the memory operation `function` (a name with
    /// [`PREFIX`]).
    pub fn decode(function: &str, input: &'a [u8], limits: Limits) -> Result<Self, MemError> {
        match function {
            SIZE if input.is_empty() => Ok(Self::Size),
            SIZE => Err(MemError::Malformed {
                op: SIZE,
                expected: "no input",
                got: input.len(),
            }),
            READ => {
                let b: &[u8; RANGE_BYTES] = input.try_into().map_err(|_| MemError::Malformed {
                    op: READ,
                    expected: "12 bytes (u64 offset, u32 length)",
                    got: input.len(),
                })?;
                let r = range_at(b);
                limits.check(r.offset, r.len.into())?;
                limits.check_read(r.len.into())?;
                Ok(Self::Read(r))
            }
            WRITE => {
                let (head, data) = input.split_first_chunk::<8>().ok_or(MemError::Malformed {
                    op: WRITE,
                    expected: "at least 8 bytes (u64 offset, then the data)",
                    got: input.len(),
                })?;
                let offset = u64::from_le_bytes(*head);
                limits.check(offset, data.len() as u64)?;
                Ok(Self::Write { offset, data })
            }
            READV => {
                let (ranges, rest) = decode_ranges(READV, input, limits)?;
                if !rest.is_empty() {
                    return Err(MemError::Malformed {
                        op: READV,
                        expected: "a u16 count and that many 12-byte ranges, nothing more",
                        got: input.len(),
                    });
                }
                limits.check_read(ranges.total)?;
                Ok(Self::ReadV(ranges))
            }
            WRITEV => {
                let (ranges, data) = decode_ranges(WRITEV, input, limits)?;
                if data.len() as u64 != ranges.total {
                    return Err(MemError::LengthMismatch {
                        ranges: ranges.total,
                        data: data.len() as u64,
                    });
                }
                Ok(Self::WriteV { ranges, data })
            }
            other => Err(MemError::UnknownOperation(other.to_owned())),
        }
    }
}

/// A range list at the start of `input`, checked; and what follows it.
fn decode_ranges<'a>(
    op: &'static str,
    input: &'a [u8],
    limits: Limits,
) -> Result<(Ranges<'a>, &'a [u8]), MemError> {
    let truncated = MemError::Malformed {
        op,
        expected: "a u16 count, then that many 12-byte ranges (u64 offset, u32 length)",
        got: input.len(),
    };
    let (count, rest) = input
        .split_first_chunk::<COUNT_BYTES>()
        .ok_or(truncated.clone())?;
    let count = usize::from(u16::from_le_bytes(*count));
    if count > MAX_RANGES {
        return Err(MemError::TooManyRanges { count });
    }
    let list_len = count * RANGE_BYTES;
    if rest.len() < list_len {
        return Err(truncated);
    }
    let (encoded, rest) = rest.split_at(list_len);
    let mut total = 0u64;
    for r in encoded.chunks_exact(RANGE_BYTES).map(range_at) {
        limits.check(r.offset, r.len.into())?;
        // At most 1024 lens of at most 2^32 each: never near overflow, but checked all the same.
        total = total
            .checked_add(r.len.into())
            .ok_or(MemError::OutOfRange {
                offset: r.offset,
                len: r.len.into(),
                region: limits.region,
            })?;
    }
    Ok((Ranges { encoded, total }, rest))
}

/// A request a client cannot encode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{count} ranges in one call: at most {MAX_RANGES}; split the call")]
    TooManyRanges { count: usize },
    #[error(
        "a range of {len} bytes is longer than one range may be ({} bytes); split it",
        u32::MAX
    )]
    RangeTooLong { len: usize },
}

/// The input of `harvest.mem.read`.
pub fn encode_read(offset: u64, len: u32) -> [u8; RANGE_BYTES] {
    let mut b = [0u8; RANGE_BYTES];
    b[..8].copy_from_slice(&offset.to_le_bytes());
    b[8..].copy_from_slice(&len.to_le_bytes());
    b
}

/// What precedes the data in the input of `harvest.mem.write`.
pub fn encode_write_head(offset: u64) -> [u8; 8] {
    offset.to_le_bytes()
}

/// Appends a range list (the input of `harvest.mem.readv`, or what precedes the data in
/// `harvest.mem.writev`'s) to `out`.
pub fn encode_ranges(
    out: &mut Vec<u8>,
    ranges: impl ExactSizeIterator<Item = (u64, usize)>,
) -> Result<(), RequestError> {
    let count = ranges.len();
    if count > MAX_RANGES {
        return Err(RequestError::TooManyRanges { count });
    }
    out.reserve(COUNT_BYTES + count * RANGE_BYTES);
    out.extend_from_slice(&(count as u16).to_le_bytes());
    for (offset, len) in ranges {
        let len = u32::try_from(len).map_err(|_| RequestError::RangeTooLong { len })?;
        out.extend_from_slice(&encode_read(offset, len));
    }
    Ok(())
}

/// The region size in `harvest.mem.size`'s output.
pub fn decode_size(output: &[u8]) -> Option<u64> {
    output.try_into().ok().map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        region: 1 << 20,
        max_read: 64 << 10,
    };

    fn list(ranges: &[(u64, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_ranges(&mut out, ranges.iter().map(|&(o, l)| (o, l as usize))).unwrap();
        out
    }

    #[test]
    fn every_operation_round_trips() {
        assert_eq!(MemOp::decode(SIZE, b"", L), Ok(MemOp::Size));
        assert_eq!(
            MemOp::decode(READ, &encode_read(4096, 100), L),
            Ok(MemOp::Read(Range {
                offset: 4096,
                len: 100
            }))
        );
        let mut w = encode_write_head(7).to_vec();
        w.extend_from_slice(b"abc");
        assert_eq!(
            MemOp::decode(WRITE, &w, L),
            Ok(MemOp::Write {
                offset: 7,
                data: b"abc"
            })
        );
        let rv = list(&[(0, 3), (100, 5)]);
        let Ok(MemOp::ReadV(r)) = MemOp::decode(READV, &rv, L) else {
            panic!()
        };
        assert_eq!(r.total_len(), 8);
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            vec![
                Range { offset: 0, len: 3 },
                Range {
                    offset: 100,
                    len: 5
                }
            ]
        );
        let mut wv = list(&[(10, 2), (0, 1)]);
        wv.extend_from_slice(b"xyz");
        let Ok(MemOp::WriteV { ranges, data }) = MemOp::decode(WRITEV, &wv, L) else {
            panic!()
        };
        assert_eq!((ranges.len(), data), (2, &b"xyz"[..]));
        // Empty lists and a write of nothing at the very end are fine.
        assert!(MemOp::decode(READV, &list(&[]), L).is_ok());
        assert!(MemOp::decode(WRITE, &encode_write_head(1 << 20), L).is_ok());
        assert_eq!(decode_size(&(1u64 << 40).to_le_bytes()), Some(1 << 40));
        assert_eq!(decode_size(b"short"), None);
    }

    #[test]
    fn ranges_outside_the_region_are_refused_with_the_range_and_size() {
        let e = MemOp::decode(READ, &encode_read((1 << 20) - 10, 11), L).unwrap_err();
        assert_eq!(
            e,
            MemError::OutOfRange {
                offset: (1 << 20) - 10,
                len: 11,
                region: 1 << 20
            }
        );
        assert!(e.to_string().contains("1048576"), "{e}");
        assert_eq!(e.code(), ErrorCode::BadRequest);
        let mut w = encode_write_head(1 << 20).to_vec();
        w.push(0);
        assert!(matches!(
            MemOp::decode(WRITE, &w, L),
            Err(MemError::OutOfRange { .. })
        ));
        // One bad range spoils the list.
        let rv = list(&[(0, 1), (1 << 20, 1)]);
        assert!(matches!(
            MemOp::decode(READV, &rv, L),
            Err(MemError::OutOfRange { .. })
        ));
    }

    #[test]
    fn overflowing_offsets_are_refused_not_wrapped() {
        for off in [u64::MAX, u64::MAX - 5, u64::MAX - u64::from(u32::MAX) + 1] {
            let e = MemOp::decode(READ, &encode_read(off, u32::MAX), L).unwrap_err();
            assert!(matches!(e, MemError::OutOfRange { .. }), "{e}");
            let mut w = encode_write_head(off).to_vec();
            w.extend_from_slice(&[0; 16]);
            assert!(matches!(
                MemOp::decode(WRITE, &w, L),
                Err(MemError::OutOfRange { .. })
            ));
            let mut wv = list(&[(off, 16)]);
            wv.extend_from_slice(&[0; 16]);
            assert!(matches!(
                MemOp::decode(WRITEV, &wv, L),
                Err(MemError::OutOfRange { .. })
            ));
        }
        // A huge region does not make u64::MAX + len fit.
        let huge = Limits {
            region: u64::MAX,
            max_read: u64::MAX,
        };
        assert!(MemOp::decode(READ, &encode_read(u64::MAX, 1), huge).is_err());
        assert!(MemOp::decode(READ, &encode_read(u64::MAX - 1, 1), huge).is_ok());
    }

    #[test]
    fn truncated_and_overlong_inputs_are_malformed() {
        for n in [0, 1, 11, 13] {
            let e = MemOp::decode(READ, &vec![0; n], L).unwrap_err();
            assert!(
                matches!(e, MemError::Malformed { got, .. } if got == n),
                "{e}"
            );
        }
        assert!(matches!(
            MemOp::decode(WRITE, &[0; 7], L),
            Err(MemError::Malformed { .. })
        ));
        assert!(matches!(
            MemOp::decode(SIZE, b"x", L),
            Err(MemError::Malformed { .. })
        ));
        // A count that promises more ranges than follow.
        let mut rv = list(&[(0, 1), (2, 1)]);
        rv.truncate(rv.len() - 1);
        assert!(matches!(
            MemOp::decode(READV, &rv, L),
            Err(MemError::Malformed { .. })
        ));
        assert!(matches!(
            MemOp::decode(READV, &[1], L),
            Err(MemError::Malformed { .. })
        ));
        assert!(matches!(
            MemOp::decode(WRITEV, &[], L),
            Err(MemError::Malformed { .. })
        ));
        // Trailing bytes after a readv's list.
        let mut rv = list(&[(0, 1)]);
        rv.push(9);
        assert!(matches!(
            MemOp::decode(READV, &rv, L),
            Err(MemError::Malformed { .. })
        ));
    }

    #[test]
    fn writev_data_must_match_its_ranges_exactly() {
        let ranges = list(&[(0, 4), (8, 4)]);
        for n in [0, 7, 9, 100] {
            let mut wv = ranges.clone();
            wv.extend(std::iter::repeat_n(1, n));
            assert_eq!(
                MemOp::decode(WRITEV, &wv, L),
                Err(MemError::LengthMismatch {
                    ranges: 8,
                    data: n as u64
                })
            );
        }
    }

    #[test]
    fn range_counts_and_read_totals_are_bounded() {
        let mut many = (1025u16).to_le_bytes().to_vec();
        many.extend(std::iter::repeat_n(0, 1025 * RANGE_BYTES));
        assert_eq!(
            MemOp::decode(READV, &many, L),
            Err(MemError::TooManyRanges { count: 1025 })
        );
        let max: Vec<(u64, u32)> = (0..MAX_RANGES as u64).map(|i| (i * 64, 64)).collect();
        assert!(MemOp::decode(READV, &list(&max), L).is_ok());
        let e = MemOp::decode(READ, &encode_read(0, (64 << 10) + 1), L).unwrap_err();
        assert!(
            matches!(e, MemError::ReadTooLarge { max: 65536, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("--max-output"), "{e}");
        // Each range fits; together they are past the limit.
        let e = MemOp::decode(READV, &list(&[(0, 40 << 10), (0, 40 << 10)]), L).unwrap_err();
        assert!(matches!(e, MemError::ReadTooLarge { len, .. } if len == 80 << 10));
        // A writev is bounded by the input limit, not the output one.
        let mut wv = list(&[(0, 40 << 10), (0, 40 << 10)]);
        wv.extend(std::iter::repeat_n(0, 80 << 10));
        assert!(MemOp::decode(WRITEV, &wv, L).is_ok());
    }

    #[test]
    fn unknown_operations_are_no_such_function_and_clients_refuse_what_cannot_encode() {
        let e = MemOp::decode("harvest.mem.free", b"", L).unwrap_err();
        assert_eq!(e.code(), ErrorCode::NoSuchFunction);
        assert!(e.to_string().contains(READV), "{e}");
        assert!(is_memory_op(READ) && !is_memory_op("read") && !is_memory_op("harvest_mem"));
        let mut out = Vec::new();
        assert_eq!(
            encode_ranges(&mut out, (0..1025u32).map(|i| (u64::from(i), 1))),
            Err(RequestError::TooManyRanges { count: 1025 })
        );
        assert_eq!(
            encode_ranges(&mut out, [(0u64, 1usize << 32)].into_iter()),
            Err(RequestError::RangeTooLong { len: 1 << 32 })
        );
    }
}
