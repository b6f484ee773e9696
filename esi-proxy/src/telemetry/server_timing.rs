//! The `Server-Timing` header value of a composed page: names made into tokens, durations and
//! descriptions bounded, so what the proxy writes is always a valid, short header.
//! Pure: no I/O, no metrics.

use http::HeaderValue;

/// Longest operation name in a `Server-Timing` entry, in chars.
const MAX_TIMING_NAME_CHARS: usize = 64;
/// Longest `desc` in a `Server-Timing` entry, in chars.
const MAX_TIMING_DESC_CHARS: usize = 256;
/// Longest `Server-Timing` value, in bytes; entries past it are dropped whole.
const MAX_TIMING_BYTES: usize = 4096;
/// Largest `dur` written, in milliseconds (about 30 years), so the number stays short.
const MAX_TIMING_MS: f64 = 1e12;

/// The `Server-Timing` header value for a composed page, one entry per `(name, milliseconds,
/// description)`, e.g. `layout;dur=12.3, compose;dur=45.6;desc="120 fragments"`.
///
/// Never fails: names are made into tokens (other characters become `_`, an empty name is `_`,
/// at most 64 chars); a negative time is written as 0 and a non-finite one is left out;
/// descriptions are quoted and escaped (control characters become spaces, non-ASCII `?`, at most
/// 256 chars); entries that would take the value past 4096 bytes are dropped whole.
pub fn server_timing(entries: &[(&str, f64, Option<&str>)]) -> HeaderValue {
    let mut out = String::new();
    let mut entry = String::new();
    for (name, ms, desc) in entries {
        entry.clear();
        if !out.is_empty() {
            entry.push_str(", ");
        }
        push_token(&mut entry, name);
        if ms.is_finite() {
            entry.push_str(";dur=");
            push_ms(&mut entry, *ms);
        }
        if let Some(desc) = desc {
            entry.push_str(";desc=\"");
            push_quoted(&mut entry, desc);
            entry.push('"');
        }
        if out.len() + entry.len() > MAX_TIMING_BYTES {
            break;
        }
        out.push_str(&entry);
    }
    // Only visible ASCII was written, so this cannot fail; an empty value is the safe fallback.
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `name` as an RFC 9110 token.
fn push_token(out: &mut String, name: &str) {
    if name.is_empty() {
        out.push('_');
    }
    for c in name.chars().take(MAX_TIMING_NAME_CHARS) {
        out.push(if is_tchar(c) { c } else { '_' });
    }
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Milliseconds with up to three decimals and no trailing zeros: `12.3`, `7`, `0.042`.
fn push_ms(out: &mut String, ms: f64) {
    let ms = ms.clamp(0.0, MAX_TIMING_MS);
    let text = format!("{ms:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    out.push_str(text);
}

/// The inside of an RFC 9110 quoted-string.
fn push_quoted(out: &mut String, desc: &str) {
    for c in desc.chars().take(MAX_TIMING_DESC_CHARS) {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\t' | ' '..='~' => out.push(c),
            c if c.is_ascii() => out.push(' '),
            _ => out.push('?'),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_values() {
        let long_name = "n".repeat(100);
        let long_desc = "d".repeat(300);
        let want_long = format!("{};desc=\"{}\"", "n".repeat(64), "d".repeat(256));
        type Entry<'a> = (&'a str, f64, Option<&'a str>);
        let cases: &[(&[Entry], &str)] = &[
            (
                &[
                    ("layout", 12.3, None),
                    ("compose", 45.6, Some("120 fragments")),
                ],
                "layout;dur=12.3, compose;dur=45.6;desc=\"120 fragments\"",
            ),
            (&[], ""),
            (&[("my name", 1.0, None)], "my_name;dur=1"),
            (
                &[("a\"b", 0.5, Some("say \"hi\" \\ bye"))],
                "a_b;dur=0.5;desc=\"say \\\"hi\\\" \\\\ bye\"",
            ),
            (&[("", 0.0, None)], "_;dur=0"),
            (&[("x", -3.0, None)], "x;dur=0"),
            (&[("x", 0.0004, None)], "x;dur=0"),
            (&[("x", 100.0, None)], "x;dur=100"),
            (&[("x", 1.234_56, None)], "x;dur=1.235"),
            (&[("x", f64::NAN, None)], "x"),
            (
                &[("x", f64::INFINITY, Some("line\nbreak\ttab"))],
                "x;desc=\"line break\ttab\"",
            ),
            (
                &[("café", 2.0, Some("naïve\u{7f}"))],
                "caf_;dur=2;desc=\"na?ve \"",
            ),
            (&[(&long_name, f64::NAN, Some(&long_desc))], &want_long),
        ];
        for (entries, want) in cases {
            let got = server_timing(entries);
            assert_eq!(got.to_str().ok(), Some(*want), "entries: {entries:?}");
        }
    }

    #[test]
    fn server_timing_is_bounded() {
        let entries: Vec<Entry> = (0..1000)
            .map(|_| ("fragment", 12.5, Some("x".repeat(50))))
            .collect();
        type Entry = (&'static str, f64, Option<String>);
        let borrowed: Vec<(&str, f64, Option<&str>)> = entries
            .iter()
            .map(|(n, ms, d)| (*n, *ms, d.as_deref()))
            .collect();
        let value = server_timing(&borrowed);
        let text = value.to_str().unwrap_or_default();
        assert!(text.len() <= MAX_TIMING_BYTES, "{} bytes", text.len());
        assert!(text.ends_with('"'), "entries are dropped whole: {text}");
        assert!(text.starts_with("fragment;dur=12.5;desc=\""));
    }
}
