//! Errors as one line of text, for logs, status conditions and HTTP bodies. Libraries nest
//! their causes (`source()`) and often leave them out of their own message, so the text of
//! the outermost error alone can miss what went wrong ("error sending request" without the
//! "connection refused").

use std::error::Error;

/// An error and its causes, `outer: inner: innermost`. A cause whose text the line already
/// holds (many libraries repeat their cause in their own message) or that has no text is
/// left out; runs of whitespace (multi-line messages) become one space.
pub fn chain(err: &dyn Error) -> String {
    let mut text = one_line(&err.to_string());
    let mut cause = err.source();
    while let Some(inner) = cause {
        let inner_text = one_line(&inner.to_string());
        if !inner_text.is_empty() && !text.contains(&inner_text) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}

/// The innermost cause alone ("Connection refused (os error 111)"), for errors whose
/// wrappers say nothing an operator needs; the outer text when the innermost has none.
pub fn root_cause(err: &dyn Error) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    match one_line(&cause.to_string()) {
        text if text.is_empty() => one_line(&err.to_string()),
        text => text,
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1
                .as_deref()
                .map(|layer| layer as &(dyn Error + 'static))
        }
    }

    fn layers(texts: &[&'static str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |inner, text| Some(Layer(text, inner.map(Box::new))))
            .unwrap()
    }

    #[test]
    fn causes_follow_once_each_on_one_line() {
        let err = layers(&["request failed", "connect\n  failed", "Connection refused"]);
        assert_eq!(
            chain(&err),
            "request failed: connect failed: Connection refused"
        );
        // Repeated in the outer message, or empty: not printed again.
        let err = layers(&["download failed: timed out", "", "timed out"]);
        assert_eq!(chain(&err), "download failed: timed out");
    }

    #[test]
    fn the_root_cause_is_the_innermost_text() {
        let err = layers(&["Failed to negotiate", "Multiple dial errors", "refused"]);
        assert_eq!(root_cause(&err), "refused");
        assert_eq!(root_cause(&layers(&["outer  text", ""])), "outer text");
    }
}
