//! The PyTorch checkpoint pickle interpreter on arbitrary bytes: Ok or a typed error, never a
//! panic, and nothing executed.
#![no_main]
use fastcomposer::io::pickle::parse_state_dict;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_state_dict(data);
});
