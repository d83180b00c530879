//! The daemon's TOML configuration: arbitrary text through `Config::parse` (parsing and
//! validation).
//!
//! Invariants: no panic on any text; an accepted configuration serialises back to TOML
//! that is accepted again and is the same configuration (so what `netbackd run` runs
//! with is what the file says, and `restart_keys` sees no change between the two).
#![no_main]
use libfuzzer_sys::fuzz_target;
use netbackd::config::{restart_keys, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = Config::parse(text, "fuzz.toml") else {
        return;
    };
    let back = toml::to_string(&c).expect("an accepted configuration does not serialise");
    let c2 = Config::parse(&back, "again.toml")
        .unwrap_or_else(|e| panic!("re-serialised configuration refused: {e:#}\n{back}"));
    assert_eq!(
        serde_json::to_value(&c).expect("to json"),
        serde_json::to_value(&c2).expect("to json"),
        "round trip changed the configuration\n{back}"
    );
    assert!(restart_keys(&c, &c2).is_empty());
});
