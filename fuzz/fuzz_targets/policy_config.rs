//! libFuzzer entry for [`harvest_fuzz::policy_config`]; run it with `scripts/fuzz policy_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harvest_fuzz::policy_config(data));
