//! The GitHub webhook body (JSON and form-encoded), parsed after the signature check.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    guestops::fuzzing::webhook_push(data, false);
    guestops::fuzzing::webhook_push(data, true);
});
