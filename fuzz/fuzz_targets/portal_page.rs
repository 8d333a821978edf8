//! One page of the portal's user listing, as the portal (or anything in its place) answers,
//! and the same bytes as an error body of the portal: neither parser panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    guestops::fuzzing::portal_page(data);
});
