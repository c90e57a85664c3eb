//! The apply document as the vault reads it: the bounded YAML reader, then
//! normalisation and validation of every object. Nothing may panic, and
//! nothing may allocate past libFuzzer's limit (`-rss_limit_mb`), whatever
//! the document: the limits of `model::yaml` must hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplexer_vaultd::model::{self, Document};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mut doc) = model::yaml::from_str::<Document>(text, model::yaml::Limits::DOCUMENT) {
        let _ = model::normalize_all(&mut doc, Some(1000));
    }
});
