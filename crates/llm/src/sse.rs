//! Server-sent events as chat-completion streams use them: `data:` lines, each event ended by a
//! blank line, `:` comments as keep-alives.

/// The longest line a stream may send (a chat-completion chunk is a few hundred bytes).
const MAX_LINE: usize = 1 << 20;

/// A stream that is not server-sent events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line is not UTF-8.
    #[error("a line of the stream is not UTF-8")]
    NotUtf8,
    /// A line longer than [`MAX_LINE`].
    #[error("a line of the stream is longer than {MAX_LINE} bytes")]
    LineTooLong,
}

/// Cuts a byte stream, arriving in any pieces, into the data of each event.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    data: Option<String>,
}

impl SseParser {
    /// Takes the next bytes; returns the data of every event they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, SseError> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(end) = self.buffer[start..].iter().position(|b| *b == b'\n') {
            let line = &self.buffer[start..start + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = std::str::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
            if line.is_empty() {
                events.extend(self.data.take());
            } else if !line.starts_with(':') {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                if field == "data" {
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match &mut self.data {
                        Some(data) => {
                            data.push('\n');
                            data.push_str(value);
                        }
                        None => self.data = Some(value.to_owned()),
                    }
                }
                // `event`, `id` and `retry` carry nothing chat completions use.
            }
            start += end + 1;
        }
        self.buffer.drain(..start);
        if self.buffer.len() > MAX_LINE {
            return Err(SseError::LineTooLong);
        }
        Ok(events)
    }

    /// At the end of the stream: the data of an event no blank line closed.
    pub fn finish(&mut self) -> Result<Option<String>, SseError> {
        if !self.buffer.is_empty() {
            let rest = std::mem::take(&mut self.buffer);
            let mut events = self.feed(&[rest.as_slice(), b"\n\n"].concat())?;
            return Ok(events.pop());
        }
        Ok(self.data.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(pieces: &[&[u8]]) -> Vec<String> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for piece in pieces {
            events.extend(parser.feed(piece).unwrap());
        }
        events.extend(parser.finish().unwrap());
        events
    }

    #[test]
    fn events_are_found_whatever_the_pieces() {
        let stream = b"data: {\"a\":1}\n\n: keep-alive\n\nevent: chunk\ndata: two\ndata: lines\n\r\ndata:[DONE]\n\n";
        let expected = ["{\"a\":1}", "two\nlines", "[DONE]"];
        assert_eq!(all(&[stream]), expected);
        for split in 1..stream.len() {
            assert_eq!(all(&[&stream[..split], &stream[split..]]), expected, "split at {split}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(all(&bytes), expected);
    }

    #[test]
    fn crlf_lines_and_a_last_event_without_its_blank_line_are_read() {
        assert_eq!(all(&[b"data: one\r\n\r\ndata: two"]), ["one", "two"]);
        assert_eq!(all(&[b"data: one\r\n\r\ndata: two\n"]), ["one", "two"]);
    }

    #[test]
    fn bytes_that_are_not_events_are_refused() {
        let mut parser = SseParser::default();
        assert_eq!(parser.feed(b"data: \xff\xfe\n"), Err(SseError::NotUtf8));
        let mut parser = SseParser::default();
        assert_eq!(parser.feed(&vec![b'x'; MAX_LINE + 1]), Err(SseError::LineTooLong));
    }
}
