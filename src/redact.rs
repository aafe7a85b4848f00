//! Secrets in other sessions' statement texts, masked before a result leaves the engine.
//!
//! Tools that show what the cluster is running (`citus_activity`, `citus_lock_inspector`,
//! `citus_advisor`) return statements other sessions sent, and those can carry a password
//! (`ALTER ROLE ... PASSWORD '...'`, a connection string passed to dblink), a key or a token.
//! A tool file names such columns in a query's `redact:`, and the engine passes their text
//! through [`secrets`]. This is redaction, best effort over what people write, not a safety
//! guard: what a tool may do is enforced by PostgreSQL, never by reading text.
//!
//! Masked, case-insensitively: a string constant after `password`, `passwd`, `secret`,
//! `token` or `api_key`/`apikey` (optionally followed by `=` or `:`), in every spelling
//! PostgreSQL reads (`'...'` with doubled quotes, `E'...'` with backslash escapes, `U&'...'`,
//! dollar quotes `$$...$$` and `$tag$...$tag$`), to the end of the text when it is not
//! closed there (statement texts arrive cut: `track_activity_query_size`, and the tool's own
//! `left()`); a bare `password=value` as in a connection string; a URL's password
//! (`scheme://user:password@host`).

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

/// What replaces a secret.
const MASK: &str = "***";

/// A secret's name, also at the end of a longer one (`db_password`, `client_secret`), then
/// what stands between it and its value: a space, `=`, `:` or `TO` (`SET app.api_key TO
/// '...'`); a name right before a quote is the end of a constant that holds the word.
static NAMED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:password|passwd|secret|token|api_?key)(?:\s*[=:]\s*|\s+(?:to\s+)?)")
        .expect("a valid pattern")
});

/// `password=value` in a connection string, also at the end of a longer name
/// (`PGPASSWORD=value`); the quoted form is a string constant above.
static CONNINFO: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(\w*(?:password|passwd))(\s*=\s*)[^\s'&]+").expect("a valid pattern")
});

/// A URL's password: `scheme://user:password@`.
static URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(://[^:/@\s']*:)[^@\s']+@").expect("a valid pattern"));

/// An error or value as a log line shows it: its secrets masked (a database error can
/// quote a value the caller sent, which can be a connection string).
pub fn shown(e: &impl std::fmt::Display) -> String {
    secrets(&e.to_string()).into_owned()
}

/// `text` with the secrets it holds masked; borrowed when there is none.
pub fn secrets(text: &str) -> Cow<'_, str> {
    let named = mask_named_constants(text);
    let conninfo = match CONNINFO.replace_all(&named, format!("${{1}}${{2}}{MASK}")) {
        Cow::Borrowed(_) => named,
        Cow::Owned(s) => Cow::Owned(s),
    };
    match URL.replace_all(&conninfo, format!("${{1}}{MASK}@")) {
        Cow::Borrowed(_) => conninfo,
        Cow::Owned(s) => Cow::Owned(s),
    }
}

/// Masks the string constant that follows each secret's name.
fn mask_named_constants(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut from = 0;
    while let Some(name) = NAMED.find_at(text, from) {
        from = name.end().max(name.start() + 1);
        let Some(end) = constant_end(&text[name.end()..]) else {
            continue;
        };
        out.push_str(&text[copied..name.end()]);
        out.push('\'');
        out.push_str(MASK);
        out.push('\'');
        copied = name.end() + end;
        from = copied;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// The length of the string constant `text` starts with, to the end of `text` when it is
/// not closed; `None` when `text` does not start with one.
fn constant_end(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    // A prefix: E'' (backslash escapes), U&'' (unicode escapes), B'', X'', N''.
    let (quote, escapes) = match b {
        [b'e' | b'E', b'\'', ..] => (1, true),
        [b'u' | b'U', b'&', b'\'', ..] => (2, false),
        [b'b' | b'B' | b'x' | b'X' | b'n' | b'N', b'\'', ..] => (1, false),
        [b'\'', ..] => (0, false),
        [b'$', ..] => return dollar_end(text),
        _ => return None,
    };
    let mut i = quote + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if escapes => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            _ => i += 1,
        }
    }
    Some(b.len())
}

/// The length of the dollar-quoted constant `text` starts with (`$$...$$`, `$tag$...$tag$`).
fn dollar_end(text: &str) -> Option<usize> {
    let rest = &text[1..];
    let tag_len = rest.find('$')?;
    let tag = &rest[..tag_len];
    let starts_like_a_tag = tag
        .chars()
        .next()
        .is_none_or(|c| c.is_alphabetic() || c == '_');
    if !starts_like_a_tag || !tag.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return None;
    }
    let open = tag_len + 2;
    let close = &text[..open];
    Some(
        text[open..]
            .find(close)
            .map_or(text.len(), |at| open + at + close.len()),
    )
}

#[cfg(test)]
mod tests {
    use super::secrets;

    #[track_caller]
    fn masked(text: &str, hidden: &str, want: &str) {
        let out = secrets(text);
        assert!(!out.contains(hidden), "{hidden} left in {out}");
        assert_eq!(out, want, "{text}");
    }

    #[test]
    fn every_spelling_of_a_password_constant_is_masked() {
        masked(
            "ALTER ROLE a PASSWORD 'hunter2'",
            "hunter2",
            "ALTER ROLE a PASSWORD '***'",
        );
        masked(
            "alter role a password 'it''s hunter2' valid until 'x'",
            "hunter2",
            "alter role a password '***' valid until 'x'",
        );
        masked(
            r"ALTER ROLE a PASSWORD E'x\'hunter2'",
            "hunter2",
            "ALTER ROLE a PASSWORD '***'",
        );
        masked(
            r"ALTER ROLE a PASSWORD U&'\0068unter2'",
            "0068unter2",
            "ALTER ROLE a PASSWORD '***'",
        );
        masked(
            "ALTER ROLE a PASSWORD $$hunter2$$ LOGIN",
            "hunter2",
            "ALTER ROLE a PASSWORD '***' LOGIN",
        );
        masked(
            "ALTER ROLE a PASSWORD $p$hunter2 $$ still$p$ LOGIN",
            "hunter2",
            "ALTER ROLE a PASSWORD '***' LOGIN",
        );
        masked(
            "CREATE USER MAPPING FOR a SERVER s OPTIONS (user 'a', password 'hunter2')",
            "hunter2",
            "CREATE USER MAPPING FOR a SERVER s OPTIONS (user 'a', password '***')",
        );
        masked(
            "SET app.api_key TO 'k-1'; SET my.secret = E'k-2'",
            "k-",
            "SET app.api_key TO '***'; SET my.secret = '***'",
        );
        masked(
            "SET my.db_password = 'k-1' /* client_secret: 'k-2', api_token '$x' */",
            "k-",
            "SET my.db_password = '***' /* client_secret: '***', api_token '***' */",
        );
        masked(
            "SELECT 1 /* api_key='k-1' Token: 'k-2' apikey 'k-3' secret='k-4' */",
            "k-",
            "SELECT 1 /* api_key='***' Token: '***' apikey '***' secret='***' */",
        );
    }

    #[test]
    fn a_constant_cut_short_is_masked_to_the_end() {
        // Statement texts arrive cut (track_activity_query_size, the tool's left()).
        masked(
            "ALTER ROLE a PASSWORD 'hunter2 and mo",
            "hunter2",
            "ALTER ROLE a PASSWORD '***'",
        );
        masked(
            "ALTER ROLE a PASSWORD $$hunt",
            "hunt",
            "ALTER ROLE a PASSWORD '***'",
        );
        masked(
            r"ALTER ROLE a PASSWORD E'hun\",
            "hun",
            "ALTER ROLE a PASSWORD '***'",
        );
    }

    #[test]
    fn connection_strings_and_urls_lose_their_passwords() {
        masked(
            "SELECT dblink('host=h password=hunter2 user=u', 'SELECT 1')",
            "hunter2",
            "SELECT dblink('host=h password=*** user=u', 'SELECT 1')",
        );
        masked(
            "SELECT dblink('host=h password = hunter2', 'x')",
            "hunter2",
            "SELECT dblink('host=h password = ***', 'x')",
        );
        // Also at the end of a longer name: an environment variable, a setting.
        masked(
            "COPY t TO PROGRAM 'PGPASSWORD=hunter2 psql -h h'",
            "hunter2",
            "COPY t TO PROGRAM 'PGPASSWORD=*** psql -h h'",
        );
        masked(
            "SELECT dblink('postgres://u:hunter2@h/db', 'x')",
            "hunter2",
            "SELECT dblink('postgres://u:***@h/db', 'x')",
        );
    }

    #[test]
    fn text_without_secrets_is_unchanged_and_borrowed() {
        for text in [
            "SELECT count(*) FROM tokens WHERE password_changed > now() - '1 day'::interval",
            "SELECT $$a$$, 'password', secret_col FROM t WHERE k = 'api_key'",
            "UPDATE t SET token_count = 3",
            "",
        ] {
            assert!(
                matches!(secrets(text), std::borrow::Cow::Borrowed(_)),
                "{text} -> {}",
                secrets(text)
            );
        }
    }
}
