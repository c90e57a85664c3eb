//! Redaction of what the proxy records: values of keys named in a scope's
//! `redaction_hints` become `[REDACTED]` (case-insensitive, exact key, at any
//! depth, in objects and arrays), and every occurrence of any value the
//! vault released for the call is scrubbed wherever it appears, in keys and
//! in strings.
//!
//! Trust: the hints and values come from the vault; the data comes from the
//! client or the downstream and is treated as hostile text.

use serde_json::Value;

/// What a redacted value or scrubbed occurrence is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Redacts `value` in place.
pub fn redact(value: &mut Value, hints: &[String], scrub: &[&[u8]]) {
    match value {
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut inner) in entries {
                if hints.iter().any(|h| h.eq_ignore_ascii_case(&key)) {
                    inner = Value::String(REDACTED.into());
                } else {
                    redact(&mut inner, hints, scrub);
                }
                map.insert(scrub_text(&key, scrub), inner);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact(v, hints, scrub)),
        Value::String(s) => *s = scrub_text(s, scrub),
        _ => {}
    }
}

/// Replaces every occurrence of every released value in `text`.
pub fn scrub_text(text: &str, scrub: &[&[u8]]) -> String {
    let mut out = text.to_owned();
    for value in scrub {
        let Ok(needle) = std::str::from_utf8(value) else {
            continue;
        };
        if !needle.is_empty() && out.contains(needle) {
            out = out.replace(needle, REDACTED);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hinted_keys_at_any_depth_and_released_values_anywhere() {
        let mut v = json!({
            "Password": "p1",
            "nested": {"token": "abc", "list": [{"PASSWORD": {"deep": 1}}, "x hunter2 y"]},
            "hunter2": "key named by the secret",
            "ok": 42
        });
        let hints = vec!["password".to_owned(), "TOKEN".to_owned()];
        redact(&mut v, &hints, &[b"hunter2"]);
        assert_eq!(
            v,
            json!({
                "Password": REDACTED,
                "nested": {"token": REDACTED, "list": [{"PASSWORD": REDACTED}, "x [REDACTED] y"]},
                "[REDACTED]": "key named by the secret",
                "ok": 42
            })
        );
    }

    #[test]
    fn every_occurrence_is_scrubbed() {
        assert_eq!(
            scrub_text("s3cret and s3cret!", &[b"s3cret"]),
            "[REDACTED] and [REDACTED]!"
        );
        assert_eq!(scrub_text("nothing here", &[b"", b"zz"]), "nothing here");
    }
}
