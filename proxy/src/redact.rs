//! Redaction of what the proxy records or passes on: values of keys named
//! in a scope's `redaction_hints` become `[REDACTED]` (case-insensitive,
//! exact key, at any depth, in objects and arrays), and every occurrence of
//! any value the vault released for the call is scrubbed wherever it
//! appears, in keys and in strings, together with the forms a value takes
//! on its way: the credentials inside an `Authorization`-style header value
//! (after the scheme; a Basic pair decoded, and its password), and the
//! percent-encoded and JSON-escaped spellings.
//!
//! Trust: the hints and values come from the vault; the data comes from the
//! client or the downstream and is treated as hostile text.

use base64::Engine as _;
use serde_json::Value;
use zeroize::Zeroizing;

/// What a redacted value or scrubbed occurrence is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// The texts to scrub for one call, longest first, so that a value that
/// contains another is replaced whole. Wiped on drop. No `Debug`.
#[derive(Default)]
pub struct Scrub {
    needles: Vec<Zeroizing<String>>,
}

impl Scrub {
    /// The needles for `values` (and, for header values, the credentials
    /// inside them). Values that are not UTF-8 cannot appear in JSON text
    /// and are skipped.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>, headers: bool) -> Self {
        let mut needles: Vec<Zeroizing<String>> = Vec::new();
        let mut add = |text: &str| {
            if !text.is_empty() && !needles.iter().any(|n| n.as_str() == text) {
                needles.push(Zeroizing::new(text.to_owned()));
            }
        };
        for value in values {
            let Ok(text) = std::str::from_utf8(value) else {
                continue;
            };
            for form in spellings(text) {
                add(&form);
            }
            if headers {
                for inner in header_credentials(text) {
                    for form in spellings(&inner) {
                        add(&form);
                    }
                }
            }
        }
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        Self { needles }
    }

    /// Whether there is nothing to scrub.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every needle replaced.
    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for needle in &self.needles {
            if out.contains(needle.as_str()) {
                out = out.replace(needle.as_str(), REDACTED);
            }
        }
        out
    }

    /// Scrubs every string and key of `value` in place.
    pub fn value(&self, value: &mut Value) {
        redact(value, &[], self);
    }
}

/// The value, and its percent-encoded and JSON-escaped spellings where
/// they differ from it.
fn spellings(text: &str) -> Vec<Zeroizing<String>> {
    let mut forms = vec![Zeroizing::new(text.to_owned())];
    let encoded = Zeroizing::new(percent_encode(text));
    if *encoded != text {
        forms.push(encoded);
    }
    let quoted = Zeroizing::new(Value::String(text.to_owned()).to_string());
    let escaped = &quoted[1..quoted.len() - 1];
    if escaped != text {
        forms.push(Zeroizing::new(escaped.to_owned()));
    }
    forms
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The credentials inside a header value of the form `SCHEME credentials`
/// (`Bearer t`, `token t`, `Basic b64`): the part after the scheme, and for
/// Basic the decoded `user:password` and the password.
fn header_credentials(value: &str) -> Vec<Zeroizing<String>> {
    let Some((scheme, rest)) = value.trim().split_once(' ') else {
        return Vec::new();
    };
    let rest = rest.trim();
    if scheme.is_empty()
        || rest.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Vec::new();
    }
    let mut found = vec![Zeroizing::new(rest.to_owned())];
    if scheme.eq_ignore_ascii_case("basic")
        && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest)
    {
        let decoded = Zeroizing::new(decoded);
        if let Ok(pair) = std::str::from_utf8(&decoded) {
            found.push(Zeroizing::new(pair.to_owned()));
            if let Some((_, password)) = pair.split_once(':') {
                found.push(Zeroizing::new(password.to_owned()));
            }
        }
    }
    found
}

/// Redacts `value` in place: hinted keys' values, and every needle.
pub fn redact(value: &mut Value, hints: &[String], scrub: &Scrub) {
    match value {
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut inner) in entries {
                if hints.iter().any(|h| h.eq_ignore_ascii_case(&key)) {
                    inner = Value::String(REDACTED.into());
                } else {
                    redact(&mut inner, hints, scrub);
                }
                map.insert(scrub.text(&key), inner);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact(v, hints, scrub)),
        Value::String(s) if !scrub.is_empty() => *s = scrub.text(s),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scrub(values: &[&str], headers: bool) -> Scrub {
        Scrub::new(values.iter().map(|v| v.as_bytes()), headers)
    }

    #[test]
    fn hinted_keys_at_any_depth_and_released_values_anywhere() {
        let mut v = json!({
            "Password": "p1",
            "nested": {"token": "abc", "list": [{"PASSWORD": {"deep": 1}}, "x hunter2 y"]},
            "hunter2": "key named by the secret",
            "ok": 42
        });
        let hints = vec!["password".to_owned(), "TOKEN".to_owned()];
        redact(&mut v, &hints, &scrub(&["hunter2"], false));
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
        let s = scrub(&["s3cret", ""], false);
        assert_eq!(s.text("s3cret and s3cret!"), "[REDACTED] and [REDACTED]!");
        assert_eq!(s.text("nothing here"), "nothing here");
        assert!(scrub(&[""], false).is_empty());
    }

    #[test]
    fn a_value_containing_another_is_replaced_whole() {
        // Whatever order the vault sends them in.
        let s = scrub(&["hunter2", "postgres://u:hunter2@db/x?key=K9"], false);
        assert_eq!(
            s.text("url postgres://u:hunter2@db/x?key=K9 end"),
            "url [REDACTED] end"
        );
    }

    #[test]
    fn header_values_give_up_their_credentials() {
        let s = scrub(&["Bearer gho_abc123"], true);
        assert_eq!(s.text("bad token gho_abc123"), "bad token [REDACTED]");
        let s = scrub(&["token ghp_x1"], true);
        assert_eq!(s.text("ghp_x1"), REDACTED);
        // Basic: the encoded pair, the pair and the password.
        let s = scrub(&["Basic dXNlcjpwQHNzdzByZA=="], true);
        assert_eq!(s.text("dXNlcjpwQHNzdzByZA=="), REDACTED);
        assert_eq!(s.text("login user:p@ssw0rd"), "login [REDACTED]");
        assert_eq!(s.text("password p@ssw0rd"), "password [REDACTED]");
        // An env value is not split at its spaces.
        let s = scrub(&["two words"], false);
        assert_eq!(s.text("words"), "words");
    }

    #[test]
    fn encoded_spellings_are_scrubbed() {
        let s = scrub(&["p@ss/w\\"], false);
        assert_eq!(s.text("q=p%40ss%2Fw%5C&x=1"), "q=[REDACTED]&x=1");
        assert_eq!(s.text(r#"{"pw":"p@ss/w\\"}"#), r#"{"pw":"[REDACTED]"}"#);
    }
}
