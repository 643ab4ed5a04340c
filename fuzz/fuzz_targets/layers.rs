//! Drives the connection layer stack (PROXY header + TLS, server side, against ringport's own
//! TLS client layer) with arbitrary split points, garbage, flipped bytes, close_notify and EOF
//! at arbitrary points, in both directions; the driver and its checks (progress on every
//! call, bounded output, no panic, and a clean run ending established with every byte through)
//! are `ringport::fuzzing::layers` (src/layer/fuzzing.rs), which the unit tests also run.
//!
//! Input layout: byte 0 picks the setup (TLS alone, PROXY optional/required v1/v2/fuzzed
//! header + TLS, PROXY alone; TLS 1.3 or 1.2); then operations, one byte each plus arguments.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // After libFuzzer's own panic hook (which aborts): the one rustls panic the TLS layer
    // catches (a debug assertion, rustls issue 959) may unwind to it; any other still aborts.
    ringport::fuzzing::allow_caught_rustls_assertion();
    let _ = ringport::fuzzing::layers(data);
});
