//! Memory leases' operations (`harvest_core::invoke::memory`): the inputs of `harvest.mem.*`,
//! which the executor checks before it touches its region.

use harvest_core::invoke::memory::{self, Limits, MemError, MemOp};

/// The operations the fuzzer picks from (and one name that is none).
const NAMES: [&str; 6] = [
    memory::SIZE,
    memory::READ,
    memory::WRITE,
    memory::READV,
    memory::WRITEV,
    "harvest.mem.nope",
];

/// Any bytes as an operation: byte 0 picks the name, bytes 1..9 the region size, 9..17 the read
/// limit, the rest is the input. Decoding never panics, and what it accepts is safe to serve:
/// every range inside the region, a read within the limit, a writev's data exactly its ranges'
/// length; a range list encodes back to the same bytes.
pub fn memory_op(data: &[u8]) {
    let Some((head, input)) = data.split_first_chunk::<17>() else {
        return;
    };
    let name = NAMES[usize::from(head[0]) % NAMES.len()];
    let limits = Limits {
        region: u64::from_le_bytes(head[1..9].try_into().expect("8 bytes")),
        max_read: u64::from_le_bytes(head[9..17].try_into().expect("8 bytes")),
    };
    let inside =
        |offset: u64, len: u64| offset.checked_add(len).is_some_and(|e| e <= limits.region);
    match MemOp::decode(name, input, limits) {
        Ok(MemOp::Size) => assert!(input.is_empty()),
        Ok(MemOp::Read(r)) => {
            assert!(inside(r.offset, r.len.into()) && u64::from(r.len) <= limits.max_read);
            assert_eq!(&memory::encode_read(r.offset, r.len)[..], input);
        }
        Ok(MemOp::Write { offset, data }) => {
            assert!(inside(offset, data.len() as u64));
            assert_eq!(input.len(), 8 + data.len());
        }
        Ok(MemOp::ReadV(ranges)) => {
            assert!(ranges.len() <= memory::MAX_RANGES && ranges.total_len() <= limits.max_read);
            let mut sum = 0u64;
            for r in ranges.iter() {
                assert!(inside(r.offset, r.len.into()));
                sum += u64::from(r.len);
            }
            assert_eq!(sum, ranges.total_len());
            let mut again = Vec::new();
            memory::encode_ranges(
                &mut again,
                ranges.iter().map(|r| (r.offset, r.len as usize)),
            )
            .expect("a decoded list encodes");
            assert_eq!(again, input);
        }
        Ok(MemOp::WriteV { ranges, data }) => {
            assert!(ranges.len() <= memory::MAX_RANGES);
            assert_eq!(data.len() as u64, ranges.total_len());
            assert!(ranges.iter().all(|r| inside(r.offset, r.len.into())));
            assert_eq!(
                input.len(),
                memory::COUNT_BYTES + ranges.len() * memory::RANGE_BYTES + data.len()
            );
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert_eq!(
                matches!(e, MemError::UnknownOperation(_)),
                name == "harvest.mem.nope"
            );
        }
    }
}
