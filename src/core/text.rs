//! Text that came from outside (Graph, AWS, the token endpoint, a payload)
//! and goes into a log line or an error message: bounded in length, and
//! stripped of control and bidirectional-override characters, so that it
//! can neither flood a log nor forge or reorder what a reader sees.

/// Whether `c` may not reach a log line as it is: control characters
/// (line breaks included) and the Unicode bidirectional controls.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// Cuts text to `max` characters, replacing unsafe characters with a space.
pub fn bounded(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if is_unsafe(c) { ' ' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_with_an_ellipsis() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "abc…");
    }

    #[test]
    fn control_and_bidi_characters_never_pass() {
        let hostile = "ok\nlevel=ERROR forged\r\u{1b}[31m\u{202E}evil\u{2066}x\u{0}";
        let clean = bounded(hostile, 200);
        assert!(clean.chars().all(|c| !is_unsafe(c)), "{clean:?}");
        assert!(clean.starts_with("ok level=ERROR forged"));
    }
}
