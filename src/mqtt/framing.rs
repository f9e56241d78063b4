//! Packet boundaries in a spliced MQTT byte stream.
//!
//! The proxy copies bytes without decoding them, but to hand a client a
//! DISCONNECT of its own (drain: "use another server") it must know where
//! one packet ends and the next begins, across arbitrary read chunking.
//! [`FrameTracker`] follows only the fixed headers (type byte, remaining
//! length) and skips bodies by counting: a few instructions per packet,
//! nothing per payload byte, no allocation.

/// Where the stream is relative to packet boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// At a boundary: the next byte starts a packet.
    #[default]
    Boundary,
    /// Inside the remaining-length varint.
    Length { value: usize, shift: u32 },
    /// Inside a body with this many bytes left.
    Body(usize),
    /// Not MQTT framing (an invalid length); no boundary is ever claimed.
    Lost,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameTracker {
    state: State,
}

impl FrameTracker {
    pub fn at_boundary(&self) -> bool {
        self.state == State::Boundary
    }

    /// Advance over `data`. Returns the offset just past the first packet
    /// boundary reached inside `data` when `stop_at_boundary` is set (the
    /// rest of `data` is not consumed), else `data.len()`.
    pub fn advance(&mut self, data: &[u8], stop_at_boundary: bool) -> usize {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Boundary => {
                    self.state = State::Length { value: 0, shift: 0 };
                    i += 1;
                }
                State::Length { value, shift } => {
                    let Some(&b) = data.get(i) else {
                        break;
                    };
                    i += 1;
                    let value = value | (usize::from(b & 0x7f) << shift);
                    if b & 0x80 != 0 {
                        self.state = if shift >= 21 {
                            State::Lost
                        } else {
                            State::Length {
                                value,
                                shift: shift + 7,
                            }
                        };
                    } else if value == 0 {
                        self.state = State::Boundary;
                        if stop_at_boundary {
                            return i;
                        }
                    } else {
                        self.state = State::Body(value);
                    }
                }
                State::Body(left) => {
                    let n = left.min(data.len() - i);
                    i += n;
                    if n == left {
                        self.state = State::Boundary;
                        if stop_at_boundary {
                            return i;
                        }
                    } else {
                        self.state = State::Body(left - n);
                    }
                }
                State::Lost => return data.len(),
            }
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PUBLISH (body 300 bytes, 2-byte length), PINGRESP, SUBACK.
    fn stream() -> (Vec<u8>, Vec<usize>) {
        let mut s = vec![0x30, 0xac, 0x02];
        s.extend(std::iter::repeat_n(7u8, 300));
        let b1 = s.len();
        s.extend([0xd0, 0x00]);
        let b2 = s.len();
        s.extend([0x90, 0x03, 0x00, 0x01, 0x00]);
        let b3 = s.len();
        (s, vec![b1, b2, b3])
    }

    #[test]
    fn boundaries_are_found_whatever_the_chunking() {
        let (s, bounds) = stream();
        for chunk in [1, 2, 3, 7, 64, 301, 1000] {
            let mut t = FrameTracker::default();
            let mut seen = Vec::new();
            let mut offset = 0;
            for c in s.chunks(chunk) {
                let mut rest = c;
                let mut base = offset;
                while !rest.is_empty() {
                    let n = t.advance(rest, true);
                    if t.at_boundary() && n > 0 {
                        seen.push(base + n);
                    }
                    base += n;
                    rest = &rest[n..];
                }
                offset += c.len();
            }
            assert_eq!(seen, bounds, "chunk size {chunk}");
            assert!(t.at_boundary());
        }
    }

    #[test]
    fn without_stopping_a_chunk_is_consumed_whole() {
        let (s, _) = stream();
        let mut t = FrameTracker::default();
        assert_eq!(t.advance(&s[..100], false), 100);
        assert!(!t.at_boundary());
        assert_eq!(t.advance(&s[100..], false), s.len() - 100);
        assert!(t.at_boundary());
    }

    #[test]
    fn an_invalid_length_loses_track_for_good() {
        let mut t = FrameTracker::default();
        t.advance(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], false);
        assert!(!t.at_boundary());
        t.advance(&[0x00; 10], true);
        assert!(!t.at_boundary());
    }
}
