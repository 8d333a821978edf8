//! The plan over arbitrary desired and observed states, guestops' state and policy (decoded
//! from the bytes over a small alphabet of addresses and ids, so that users collide): the
//! properties of `guestops::fuzzing::check_plan` (ownership of removals, the guards, one
//! invitation per address, determinism, ...).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    guestops::fuzzing::plan(data);
});
