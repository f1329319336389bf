//! Stop strings: finding the first of several stop strings in generated text that arrives
//! piece by piece, and holding back text that might be the start of one.
//!
//! Tokens do not line up with stop strings (`"\n\n"` may come as `"\n"` + `"\n"`, or inside
//! `".\n\nThe"`), so matching runs on the text, not on tokens. While streaming, the tail
//! of the text that is a prefix of some stop string is held back until the next piece
//! decides it: emitted when it turns out not to be a stop, dropped when it is one. The stop
//! string itself and everything after it never reach the client (OpenAI semantics).

/// Incremental matcher over the text of one generation.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released, because it may begin a stop string.
    held: String,
}

/// What [`StopMatcher::push`] decided about the text so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text that is safe to send; generation goes on.
    Continue(String),
    /// A stop string was found: the text before it is sent and generation ends.
    Stopped(String),
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored (they would match everywhere).
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|stop| !stop.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Adds the next piece of generated text.
    pub fn push(&mut self, piece: &str) -> StopOutcome {
        self.held.push_str(piece);
        // The earliest stop in the text wins, whichever string it is.
        let earliest = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(at) = earliest {
            let text = self.held[..at].to_string();
            self.held.clear();
            return StopOutcome::Stopped(text);
        }
        let keep = self.partial_match_len();
        let release = self.held.len() - keep;
        let text = self.held[..release].to_string();
        self.held.drain(..release);
        StopOutcome::Continue(text)
    }

    /// Ends the generation without a stop string: whatever was held back is released.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest tail of the held text that is a proper prefix of
    /// some stop string (a full match was handled before).
    fn partial_match_len(&self) -> usize {
        let held = self.held.as_str();
        held.char_indices()
            .map(|(start, _)| &held[start..])
            .find(|tail| self.stops.iter().any(|stop| stop.starts_with(tail)))
            .map_or(0, str::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(stops.iter().map(|s| s.to_string()))
    }

    #[test]
    fn text_without_stops_passes_through() {
        let mut m = matcher(&[]);
        assert_eq!(m.push("hello"), StopOutcome::Continue("hello".into()));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn stop_inside_one_piece_cuts_it() {
        let mut m = matcher(&["END"]);
        assert_eq!(m.push("abcENDdef"), StopOutcome::Stopped("abc".into()));
    }

    #[test]
    fn stop_across_pieces_is_found_and_excluded() {
        let mut m = matcher(&["\n\n"]);
        assert_eq!(m.push("one.\n"), StopOutcome::Continue("one.".into()));
        assert_eq!(m.push("\nTwo"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn partial_match_that_fails_is_released() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("ST"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("OP"), StopOutcome::Stopped(String::new()));

        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("ST"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("ar"), StopOutcome::Continue("STar".into()));
    }

    #[test]
    fn held_text_is_released_at_the_end() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("go S"), StopOutcome::Continue("go ".into()));
        assert_eq!(m.finish(), "S");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut m = matcher(&["world", "lo"]);
        assert_eq!(m.push("hello world"), StopOutcome::Stopped("hel".into()));
    }

    #[test]
    fn stop_spread_over_many_single_character_pieces() {
        let mut m = matcher(&["<|end|>"]);
        let mut out = String::new();
        let mut stopped = false;
        for ch in "answer<|end|>tail".chars() {
            match m.push(&ch.to_string()) {
                StopOutcome::Continue(text) => out.push_str(&text),
                StopOutcome::Stopped(text) => {
                    out.push_str(&text);
                    stopped = true;
                    break;
                }
            }
        }
        assert!(stopped);
        assert_eq!(out, "answer");
    }

    #[test]
    fn multibyte_text_is_split_on_character_boundaries() {
        let mut m = matcher(&["é!"]);
        assert_eq!(m.push("café"), StopOutcome::Continue("caf".into()));
        assert_eq!(m.push("?"), StopOutcome::Continue("é?".into()));
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        let mut m = matcher(&[""]);
        assert_eq!(m.push("abc"), StopOutcome::Continue("abc".into()));
    }
}
