//! Small text helpers shared by both binaries.

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn cuts_on_a_character_boundary() {
        assert_eq!(super::cut("abc", 5), "abc");
        assert_eq!(super::cut("abcdef", 3), "abc");
        assert_eq!(super::cut("aé", 2), "a");
    }
}
