//! libFuzzer entry for [`harvest_fuzz::scheduler_config`]; run it with `scripts/fuzz scheduler_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harvest_fuzz::scheduler_config(data));
