//! Drives the connection state machine (`ringport::machine`, src/machine/) with arbitrary
//! event sequences around a small model of the engine; the driver and its checks (the
//! machine's invariants after every step, a close reported once with its recorded reason, no
//! byte dropped by a graceful close, a flush is a fixpoint: no spin) are
//! `ringport::machine::script::run` (src/machine/script.rs), which the unit tests also run.
//!
//! Input layout: byte 0 picks the start (accepted or connecting, layered or plain); then one
//! byte per step: an event, a write, a completed send, a tick, or a flush.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ringport::machine::script::run(data);
});
