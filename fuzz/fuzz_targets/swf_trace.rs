//! libFuzzer entry for [`harvest_fuzz::swf_trace`]; run it with `scripts/fuzz swf_trace`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harvest_fuzz::swf_trace(data));
