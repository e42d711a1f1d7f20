//! Configuration parsing: any text either fails to parse as a node's TOML
//! file or parses to a file that validates or is refused without panicking
//! (`Config::from_file`), and a parsed file re-serialises to a fixed point
//! (TOML out, parsed again, TOML out: the same text).
#![no_main]

use std::path::Path;

use baa_node::config::{Config, FileConfig, Overrides};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = toml::from_str::<FileConfig>(s) else {
        return;
    };
    if let Ok(once) = toml::to_string(&file) {
        let back: FileConfig = toml::from_str(&once).expect("what it wrote parses");
        assert_eq!(toml::to_string(&back).expect("writes"), once);
    }
    // Validation reads no file but the admin token's: leave that out.
    if file.admin_token_file.is_none() {
        let _ = Config::from_file(file, Overrides::default(), Path::new("/nonexistent"));
    }
});
