//! The error bodies of Graph, of the token endpoint and of a managed-identity endpoint: never
//! panic, and the error says what the body said.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    guestops::fuzzing::graph_error(data);
});
