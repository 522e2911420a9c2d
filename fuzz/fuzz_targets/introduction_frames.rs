//! See `punchgate::fuzzing::introduction_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| punchgate::fuzzing::introduction_frames(data));
