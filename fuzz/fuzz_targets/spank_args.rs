//! libFuzzer entry for [`harvest_fuzz::spank_args`]; run it with `scripts/fuzz spank_args`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harvest_fuzz::spank_args(data));
