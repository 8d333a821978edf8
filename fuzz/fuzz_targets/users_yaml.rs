//! `users.yaml`: parsing and validation never panic, and every rendering of the diagnostics
//! (human, GitHub annotations, JSON) works on whatever the parser reported.
#![no_main]

use guestops::desired::spec::{self, OutputFormat, SpecPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = spec::parse(data, &SpecPolicy::default());
    assert_eq!(parsed.desired.is_some(), !parsed.has_errors());
    for format in [
        OutputFormat::Human,
        OutputFormat::Github,
        OutputFormat::Json,
    ] {
        let mut out = Vec::new();
        spec::render(&parsed.diagnostics, data, "users.yaml", format, &mut out)
            .expect("rendering into memory cannot fail");
    }
});
