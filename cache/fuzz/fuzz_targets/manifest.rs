//! `Manifest::parse` and `Manifest::validate` on arbitrary text: never a panic, only a
//! `CacheError` naming the manifest.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use posthoc_cache::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("manifest.json");
    if let Ok(m) = Manifest::parse(text, file) {
        let _ = m.validate(file);
        for name in m.split_names(None) {
            let _ = m.split_entry(&name);
        }
    }
});
