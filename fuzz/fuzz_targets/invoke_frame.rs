//! libFuzzer entry for [`harvest_fuzz::invoke_frame`]; run it with `scripts/fuzz invoke_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harvest_fuzz::invoke_frame(data));
