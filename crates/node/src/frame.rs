//! Length-prefixed JSON frames: a u32 big-endian length, then that many bytes of JSON, at most
//! [`MAX_FRAME_LEN`](crate::protocol::MAX_FRAME_LEN). Used by the tunnel negotiation and the
//! introduction protocol.
//!
//! [`decode`] is the sans-IO parser (a byte slice in, a message and its length out); [`read`]
//! and [`write`] do the I/O and never read past the frame, so bytes that follow stay in the
//! stream. Unknown JSON fields are ignored, so either side can add fields.

use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::protocol::MAX_FRAME_LEN;

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The announced length exceeds the limit; the body was not read.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not the expected JSON message.
    #[error("malformed frame: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The stream ended before a whole frame arrived.
    #[error("stream closed in the middle of a frame")]
    Truncated,
    /// The stream failed.
    #[error("i/o error: {0}")]
    Io(#[source] std::io::Error),
}

/// Encodes `message` as one frame.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(message).map_err(FrameError::Malformed)?;
    if body.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Parses one frame from the front of `buf`: `Ok(None)` if more bytes are needed, otherwise the
/// message and how many bytes it used.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(header.try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let message = serde_json::from_slice(body).map_err(FrameError::Malformed)?;
    Ok(Some((message, 4 + len)))
}

/// Reads exactly one frame. Not cancel-safe (a partial frame is lost); callers wrap it in a
/// timeout and drop the stream on expiry.
pub async fn read<T, R>(reader: &mut R) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin + ?Sized,
{
    let mut header = [0u8; 4];
    reader
        .read_exact(&mut header)
        .await
        .map_err(eof_is_truncated)?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .await
        .map_err(eof_is_truncated)?;
    serde_json::from_slice(&body).map_err(FrameError::Malformed)
}

/// Writes one frame and flushes it.
pub async fn write<T, W>(writer: &mut W, message: &T) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin + ?Sized,
{
    let frame = encode(message)?;
    writer.write_all(&frame).await.map_err(FrameError::Io)?;
    writer.flush().await.map_err(FrameError::Io)
}

fn eof_is_truncated(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(e)
    }
}

/// How many characters of a peer's text (a refusal reason, an agent version) a log line holds.
pub const MAX_LOGGED_TEXT: usize = 200;

/// A peer's text as it may go into a log line: at most [`MAX_LOGGED_TEXT`] characters, control
/// characters (newlines included) shown as `?`, and what was cut said at the end. A peer decides
/// what it sends; a log line should not be 64 KiB long or look like several lines.
pub fn loggable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_LOGGED_TEXT)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let total = text.chars().count();
    if total > MAX_LOGGED_TEXT {
        out.push_str(&format!(
            "... ({} more characters)",
            total - MAX_LOGGED_TEXT
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::wire::{TunnelRequest, TunnelResponse};

    #[test]
    fn round_trip_and_partial_input() {
        let frame = encode(&TunnelRequest {
            service: "echo".into(),
        })
        .expect("encode");
        assert_eq!(&frame[..4], &(frame.len() as u32 - 4).to_be_bytes());
        for cut in 0..frame.len() {
            assert!(
                decode::<TunnelRequest>(&frame[..cut])
                    .expect("prefix")
                    .is_none()
            );
        }
        let mut with_tail = frame.clone();
        with_tail.extend_from_slice(b"tunnel bytes");
        let (req, used) = decode::<TunnelRequest>(&with_tail)
            .expect("decode")
            .expect("whole");
        assert_eq!(req.service, "echo");
        assert_eq!(used, frame.len());
    }

    #[test]
    fn unknown_fields_are_ignored_and_reason_is_optional() {
        let body = br#"{"service":"ssh","version":2}"#;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        let (req, _) = decode::<TunnelRequest>(&frame).expect("ok").expect("whole");
        assert_eq!(req.service, "ssh");
        let encoded = encode(&TunnelResponse::accept()).expect("encode");
        assert_eq!(&encoded[4..], br#"{"accepted":true}"#);
    }

    #[test]
    fn oversized_length_is_refused_before_the_body() {
        let mut frame = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
        frame.push(b'{');
        assert!(matches!(
            decode::<TunnelRequest>(&frame),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            encode(&TunnelRequest {
                service: "x".repeat(MAX_FRAME_LEN)
            }),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn malformed_json_is_an_error() {
        for body in [&b""[..], b"{", b"[]", br#"{"servic":"x"}"#, b"\xff\xfe"] {
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(body);
            assert!(
                matches!(
                    decode::<TunnelRequest>(&frame),
                    Err(FrameError::Malformed(_))
                ),
                "{body:?}"
            );
        }
    }

    #[tokio::test]
    async fn read_stops_at_the_frame_boundary() {
        let mut bytes = encode(&TunnelRequest {
            service: "echo".into(),
        })
        .expect("encode");
        bytes.extend_from_slice(b"payload");
        let mut reader = &bytes[..];
        let req: TunnelRequest = read(&mut reader).await.expect("read");
        assert_eq!(req.service, "echo");
        assert_eq!(reader, b"payload");
        let mut short = &bytes[..6];
        assert!(matches!(
            read::<TunnelRequest, _>(&mut short).await,
            Err(FrameError::Truncated)
        ));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics_and_never_overreads(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Ok(Some((_, used))) = decode::<TunnelRequest>(&bytes) {
                proptest::prop_assert!(used <= bytes.len());
            }
        }

        #[test]
        fn any_service_name_round_trips(service in ".{0,300}", tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut frame = encode(&TunnelRequest { service: service.clone() }).expect("small");
            let len = frame.len();
            frame.extend_from_slice(&tail);
            let (req, used) = decode::<TunnelRequest>(&frame).expect("valid").expect("whole");
            proptest::prop_assert_eq!(req.service, service);
            proptest::prop_assert_eq!(used, len);
        }
    }

    #[test]
    fn a_peers_text_is_cut_and_kept_on_one_line_in_logs() {
        assert_eq!(loggable("unknown service 'echo'"), "unknown service 'echo'");
        assert_eq!(loggable("two\nlines\r\x1b[31m"), "two?lines??[31m");
        let long = "x".repeat(60_000);
        let logged = loggable(&long);
        assert!(logged.starts_with(&"x".repeat(MAX_LOGGED_TEXT)));
        assert!(logged.ends_with("... (59800 more characters)"), "{logged}");
    }
}
