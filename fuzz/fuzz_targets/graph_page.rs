//! One page of a Graph user listing (`GET /users`), as the client reads it: never panics, a
//! nextLink it would follow stays on the Graph origin, and the plan's index finds every user by
//! every address the client's matcher says it holds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    guestops::fuzzing::graph_page(data);
});
