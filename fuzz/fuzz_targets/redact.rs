//! The proxy's redaction walker. The input's first line is a released
//! value, the rest a JSON document; after `redact`, no string of the
//! document (key or value) may hold the value in any of its usual forms,
//! and nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplexer_proxy::redact::{Scrub, redact};
use serde_json::Value;

fn strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k);
                strings(v, out);
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some((secret, json)) = text.split_once('\n') else {
        return;
    };
    let Ok(mut value) = serde_json::from_str::<Value>(json) else {
        return;
    };
    let scrub = Scrub::new([secret.as_bytes()], false);
    redact(&mut value, &[], &scrub);
    // A value of a few characters may stand in a marker itself; the
    // promise is about values long enough to be credentials.
    if secret.chars().count() < 8 {
        return;
    }
    let mut all = Vec::new();
    strings(&value, &mut all);
    for s in all {
        assert!(!s.contains(secret), "a released value survived redaction");
    }
});
