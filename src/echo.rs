//! Caps what error texts quote back to the caller.
//!
//! Error messages name the value that was wrong (jsonschema writes the instance as
//! JSON, the database quotes input it could not parse, serde names the bad value). A
//! caller may send megabytes; quoting them back whole costs the model its context and
//! can exceed what a client accepts. Every error that leaves the server goes through
//! [`cap`].

use std::borrow::Cow;

/// The longest quoted value (a JSON string in an error text) kept whole, in characters.
pub const MAX_ECHO_CHARS: usize = 200;
/// The longest error text kept whole, in characters, once its quoted values are capped.
pub const MAX_ERROR_CHARS: usize = 1000;

/// `text` with every double-quoted value longer than [`MAX_ECHO_CHARS`] cut to that many
/// characters plus `…(N bytes)` (the value's whole size), then, if the text is still
/// longer than [`MAX_ERROR_CHARS`] (a long array, an unquoted name), cut in the middle
/// with `…(N bytes cut)…`.
///
/// Error texts quote what the caller sent (jsonschema writes the instance as JSON, the
/// database quotes the input it could not parse); this keeps the start of each value,
/// which is what identifies it, and says how much was left out.
pub fn cap(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_ECHO_CHARS {
        return Cow::Borrowed(text);
    }
    let mut out = String::new();
    let mut copied = 0; // bytes of `text` already handled
    let mut chars = text.char_indices();
    while let Some((open, c)) = chars.next() {
        if c != '"' {
            continue;
        }
        // Find the closing quote, skipping escaped characters.
        let mut close = text.len();
        let mut escaped = false;
        for (i, c) in chars.by_ref() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    close = i;
                    break;
                }
                _ => {}
            }
        }
        let value = &text[open + 1..close];
        if let Some((cut, _)) = value.char_indices().nth(MAX_ECHO_CHARS) {
            out.push_str(&text[copied..open + 1 + cut]);
            out.push_str(&format!("…({} bytes)", value.len()));
            copied = close;
        }
    }
    let capped = if copied == 0 {
        Cow::Borrowed(text)
    } else {
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    };
    if capped.chars().nth(MAX_ERROR_CHARS).is_none() {
        return capped;
    }
    let head_end = capped
        .char_indices()
        .nth(MAX_ERROR_CHARS - MAX_ECHO_CHARS)
        .map_or(capped.len(), |(i, _)| i);
    let tail_start = capped
        .char_indices()
        .rev()
        .nth(MAX_ECHO_CHARS - 1)
        .map_or(head_end, |(i, _)| i.max(head_end));
    Cow::Owned(format!(
        "{}…({} bytes cut)…{}",
        &capped[..head_end],
        tail_start - head_end,
        &capped[tail_start..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_are_untouched() {
        let t = r#"/limit: "many" is not of type "integer""#;
        assert!(matches!(cap(t), Cow::Borrowed(_)));
        let long_but_plain = format!("{} is fine", "word ".repeat(100));
        assert_eq!(cap(&long_but_plain), long_but_plain);
    }

    #[test]
    fn long_quoted_values_keep_their_start_and_size() {
        let value = "x".repeat(8 << 20);
        let t = format!(r#"/limit: "{value}" is not of type "integer""#);
        let c = cap(&t);
        assert!(c.len() < 400, "{}", c.len());
        assert!(c.starts_with(&format!("/limit: \"{}", "x".repeat(MAX_ECHO_CHARS))));
        assert!(
            c.ends_with(r#"…(8388608 bytes)" is not of type "integer""#),
            "{c}"
        );
    }

    #[test]
    fn escapes_multibyte_text_and_unterminated_quotes_are_safe() {
        let t = format!(r#"a "{}\" b" and "{}"#, "é".repeat(300), "ü".repeat(300));
        let c = cap(&t);
        assert!(c.contains("…(600 bytes)"), "{c}");
        assert_eq!(c.matches("…(").count(), 2, "{c}");
    }

    #[test]
    fn long_unquoted_texts_are_cut_in_the_middle() {
        let t = format!("unknown tool `{}`", "n".repeat(100_000));
        let c = cap(&t);
        assert!(c.chars().count() < MAX_ERROR_CHARS + 30, "{}", c.len());
        assert!(
            c.starts_with("unknown tool `nnn") && c.ends_with("nnn`"),
            "{c}"
        );
        assert!(c.contains(" bytes cut)…"), "{c}");
    }
}
