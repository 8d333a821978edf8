//! A Graph `$batch` answer (`ids\nbody`: the ids the request sent, then the answer): never
//! panics, an accepted answer answers every id sent exactly once, and every inner answer goes
//! through what the client does with it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    guestops::fuzzing::graph_batch(data);
});
