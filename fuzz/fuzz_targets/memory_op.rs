//! libFuzzer entry for [`harvest_fuzz::memory_op`]; run it with `scripts/fuzz memory_op`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harvest_fuzz::memory_op(data));
