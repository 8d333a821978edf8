//! One page of a Graph delta round: never panics, exactly one of nextLink and deltaLink, each
//! on the Graph origin, and a kept deltaLink can be followed by the next round.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    guestops::fuzzing::graph_delta_page(data);
});
