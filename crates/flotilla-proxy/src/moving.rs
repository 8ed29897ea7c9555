//! Asking live sessions to reconnect elsewhere, for an instance that is about to stop (a Spot
//! interruption, a scale-in, a replaced task) while other instances of its version go on.
//!
//! A server whose [`ProxyConfig::session_move`](crate::ProxyConfig) holds a [`SessionMove`]
//! watches it. Once [`SessionMove::ask`] is called:
//! - each WebSocket gets a close frame with code 1001 ("going away"), sent at a frame boundary of
//!   what the app is sending, so the client never sees half a message; the client's browser code
//!   (or the framework's) reconnects, with the tab's version on the URL, and the load balancer
//!   sends it to another instance of the same version;
//! - each event stream (`text/event-stream`) ends after the event in progress, and `EventSource`
//!   reconnects by itself.
//!
//! Whatever does not reach a boundary before the server's shutdown deadline is cut as before.
//! The boundary trackers here are pure: [`FrameCursor`] follows WebSocket frames as they pass,
//! [`EventBoundary`] follows the blank lines that end server-sent events.

use std::sync::Arc;

use tokio::sync::watch;

/// The close code of a session asked to move: 1001, "going away" (RFC 6455 §7.4.1), which
/// browsers and framework clients treat as "reconnect".
pub const GOING_AWAY: u16 = 1001;

/// The close reason sent with [`GOING_AWAY`].
const GOING_AWAY_REASON: &[u8] = b"instance stopping; reconnect";

/// The close frame a server sends to ask its client to reconnect: unmasked, FIN, opcode 8,
/// the code and the reason.
pub(crate) fn going_away_frame() -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + GOING_AWAY_REASON.len());
    frame.push(0x88);
    frame.push(u8::try_from(2 + GOING_AWAY_REASON.len()).expect("a short reason"));
    frame.extend_from_slice(&GOING_AWAY.to_be_bytes());
    frame.extend_from_slice(GOING_AWAY_REASON);
    frame
}

/// A switch shared by the servers of an instance: once asked, their live sessions are told to
/// reconnect (see the module docs). Cloning shares the switch.
#[derive(Clone, Debug)]
pub struct SessionMove {
    asked: Arc<watch::Sender<bool>>,
}

impl Default for SessionMove {
    fn default() -> Self {
        SessionMove::new()
    }
}

impl SessionMove {
    /// A switch not yet asked.
    pub fn new() -> Self {
        SessionMove {
            asked: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Asks every live session, and every one that starts from now on, to reconnect.
    pub fn ask(&self) {
        self.asked.send_replace(true);
    }

    /// A receiver that sees the switch flip.
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.asked.subscribe()
    }
}

/// Follows the WebSocket frames of one direction of a connection, to know where one ends.
///
/// It reads only frame headers and counts payload bytes past. Anything that is not a valid frame
/// sequence (a protocol other than WebSocket behind the upgrade, or a broken peer) leaves it
/// [`broken`](Self::is_broken): never at a boundary again, so nothing is ever inserted.
#[derive(Clone, Debug, Default)]
pub(crate) struct FrameCursor {
    /// The header bytes of the frame being read, while its header is incomplete.
    header: [u8; 14],
    /// How many of `header` are filled.
    have: usize,
    /// Payload bytes of the current frame still to pass.
    left: u64,
    broken: bool,
}

impl FrameCursor {
    /// Whether everything passed so far ends exactly at the end of a frame.
    pub(crate) fn at_boundary(&self) -> bool {
        !self.broken && self.have == 0 && self.left == 0
    }

    /// Whether the bytes seen were not WebSocket frames.
    #[cfg(test)]
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Passes all of `data`.
    pub(crate) fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let used = self.pass_to_boundary(data);
            data = &data[used..];
        }
    }

    /// Passes bytes of `data` until the end of the current frame (at least one byte), and says
    /// how many it passed: all of `data` when the frame goes on beyond it.
    pub(crate) fn pass_to_boundary(&mut self, data: &[u8]) -> usize {
        let mut used = 0;
        while used < data.len() {
            if self.broken {
                return data.len();
            }
            if self.left > 0 {
                let take = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - used);
                self.left -= take as u64;
                used += take;
                if self.left == 0 {
                    return used;
                }
                continue;
            }
            self.header[self.have] = data[used];
            self.have += 1;
            used += 1;
            match self.header_len() {
                Some(len) if len == self.have => {
                    self.left = self.payload_len();
                    self.have = 0;
                    if self.left == 0 {
                        return used;
                    }
                }
                _ => {}
            }
        }
        used
    }

    /// The length of the header being read, once its first two bytes are in; marks the cursor
    /// broken when they are not a valid frame's.
    fn header_len(&mut self) -> Option<usize> {
        if self.have < 2 {
            return None;
        }
        let (first, second) = (self.header[0], self.header[1]);
        let opcode = first & 0x0f;
        let short_len = second & 0x7f;
        let valid = match opcode {
            0..=2 => true,
            // Control frames: never fragmented, at most 125 bytes of payload.
            8..=10 => first & 0x80 != 0 && short_len <= 125,
            _ => false,
        };
        if !valid {
            self.broken = true;
            return None;
        }
        let extended = match short_len {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        Some(2 + extended + mask)
    }

    /// The payload length of the complete header in `header`.
    fn payload_len(&mut self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&self.header[2..10]);
                let len = u64::from_be_bytes(bytes);
                if len >> 63 != 0 {
                    self.broken = true;
                }
                len
            }
            short => u64::from(short),
        }
    }
}

/// Follows an event stream's bytes to know whether they end between two events (after a blank
/// line: `\n\n`, `\r\r` or `\r\n\r\n`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct EventBoundary {
    /// The last three bytes passed (newlines before the first byte: a stream starts between
    /// events).
    last: [u8; 3],
}

impl Default for EventBoundary {
    fn default() -> Self {
        EventBoundary { last: *b"\n\n\n" }
    }
}

impl EventBoundary {
    /// Whether the bytes passed so far end between two events.
    pub(crate) fn at_boundary(&self) -> bool {
        let [a, b, c] = self.last;
        (b == c && (c == b'\n' || c == b'\r')) || (a == b'\n' && b == b'\r' && c == b'\n')
    }

    /// Passes `data`.
    pub(crate) fn advance(&mut self, data: &[u8]) {
        for &byte in data.iter().rev().take(3).rev() {
            self.last = [self.last[1], self.last[2], byte];
        }
    }

    /// How many bytes of `data` to pass to end between two events, if such a point is in it
    /// (the first one after at least one byte).
    pub(crate) fn first_boundary(&self, data: &[u8]) -> Option<usize> {
        let mut probe = *self;
        for (i, &byte) in data.iter().enumerate() {
            probe.last = [probe.last[1], probe.last[2], byte];
            if probe.at_boundary() {
                return Some(i + 1);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame (unmasked) or a client frame (masked) with `payload`.
    fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out.extend_from_slice(payload);
        out
    }

    /// Where frames end in `stream`, found by feeding it in pieces of `piece` bytes.
    fn boundaries(stream: &[u8], piece: usize) -> Vec<usize> {
        let mut cursor = FrameCursor::default();
        let mut found = Vec::new();
        let mut offset = 0;
        for chunk in stream.chunks(piece) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let used = cursor.pass_to_boundary(rest);
                offset += used;
                rest = &rest[used..];
                if cursor.at_boundary() {
                    found.push(offset);
                }
            }
        }
        found
    }

    #[test]
    fn frames_of_every_length_form_end_where_they_end_however_the_bytes_arrive() {
        let frames = [
            frame(1, b"hello", false),
            frame(9, b"", false),
            frame(2, &[7u8; 300], false),
            frame(1, &[b'x'; 70_000], true),
            frame(10, b"pong", true),
        ];
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for f in &frames {
            stream.extend_from_slice(f);
            ends.push(stream.len());
        }
        for piece in [1, 2, 3, 7, 100, 4096, stream.len()] {
            assert_eq!(boundaries(&stream, piece), ends, "pieces of {piece}");
        }
    }

    #[test]
    fn a_fragmented_message_has_boundaries_between_its_fragments() {
        // Control frames may come between fragments, so a close frame may too.
        let mut stream = vec![0x01, 3];
        stream.extend_from_slice(b"abc");
        stream.extend_from_slice(&[0x80, 2]);
        stream.extend_from_slice(b"de");
        assert_eq!(boundaries(&stream, 1), vec![5, 9]);
    }

    #[test]
    fn bytes_that_are_not_frames_never_offer_a_boundary() {
        for garbage in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            &[0x83, 0],
            &[0x09, 0],
            &[0x89, 126],
        ] {
            let mut cursor = FrameCursor::default();
            cursor.advance(garbage);
            cursor.advance(&frame(1, b"later", false));
            assert!(cursor.is_broken(), "{garbage:?}");
            assert!(!cursor.at_boundary(), "{garbage:?}");
        }
    }

    #[test]
    fn the_going_away_frame_is_a_valid_close_frame() {
        let frame = going_away_frame();
        let mut cursor = FrameCursor::default();
        assert_eq!(cursor.pass_to_boundary(&frame), frame.len());
        assert!(cursor.at_boundary());
        assert_eq!(frame[0], 0x88);
        assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), GOING_AWAY);
    }

    #[test]
    fn event_streams_end_between_events_with_any_line_ending() {
        for (stream, first) in [
            (&b"data: a\n\ndata: b"[..], Some(9)),
            (b"data: a\r\rdata: b", Some(9)),
            (b"data: a\r\n\r\ndata: b", Some(11)),
            (b"data: a\ndata: b\n", None),
            (b": keepalive\n\n", Some(13)),
        ] {
            let boundary = EventBoundary::default();
            assert!(boundary.at_boundary(), "a stream starts between events");
            assert_eq!(
                boundary.first_boundary(stream),
                first,
                "{:?}",
                String::from_utf8_lossy(stream)
            );
        }
        let mut split = EventBoundary::default();
        split.advance(b"data: a\r\n");
        assert!(!split.at_boundary());
        assert_eq!(split.first_boundary(b"\r\nrest"), Some(2));
        split.advance(b"\r\n");
        assert!(split.at_boundary());
        split.advance(b"data: b");
        assert!(!split.at_boundary());
    }
}
