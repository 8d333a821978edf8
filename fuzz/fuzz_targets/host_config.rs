//! The host configuration: loading never panics, and a configuration that loads renders to a
//! file that loads back to the same configuration.
#![no_main]

use guestops::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let no_env = |_: &str| None;
    if let Ok(config) = Config::from_yaml_with_env(text, "fuzz.yaml", &no_env) {
        let rendered = config.to_yaml();
        let again = Config::from_yaml_with_env(&rendered, "rendered.yaml", &no_env)
            .unwrap_or_else(|e| panic!("the rendering does not load: {e}\n{rendered}"));
        assert_eq!(again, config, "{rendered}");
    }
});
