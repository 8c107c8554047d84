//! Length-prefixed frames: a little-endian `u32` payload length, then the payload.
//!
//! The length is checked against [`MAX_FRAME_LEN`] before any allocation, so a hostile or
//! corrupt peer cannot make either side allocate more than one frame's worth of memory.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ProtocolError;

/// Largest payload a frame may carry. Data chunks are at most [`MAX_CHUNK_LEN`], so every
/// message fits with room for its envelope.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Largest data chunk (stdout, stdin, file data) put into one message.
pub const MAX_CHUNK_LEN: usize = 256 * 1024;

const HEADER_LEN: usize = 4;

/// Encodes one message into a complete frame (header + payload).
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut buf = vec![0u8; HEADER_LEN];
    let mut buf = postcard::to_extend(message, std::mem::take(&mut buf))
        .map_err(|e| ProtocolError::Encode(e.to_string()))?;
    let payload_len = buf.len() - HEADER_LEN;
    if payload_len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge {
            len: payload_len,
            max: MAX_FRAME_LEN,
        });
    }
    buf[..HEADER_LEN].copy_from_slice(&(payload_len as u32).to_le_bytes());
    Ok(buf)
}

/// Decodes one message from a frame payload (without the header).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ProtocolError> {
    let (message, rest) =
        postcard::take_from_bytes(payload).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(message)
}

/// Splits one complete frame off the front of `buf`: `Ok(None)` when more bytes are
/// needed, otherwise the decoded message and the number of bytes consumed.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, ProtocolError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = payload_len(header.try_into().map_err(|_| ProtocolError::Closed)?)?;
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(payload)?, HEADER_LEN + len)))
}

fn payload_len(header: [u8; HEADER_LEN]) -> Result<usize, ProtocolError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

/// Reads frames from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
        }
    }

    /// Reads the next message; `Ok(None)` on a clean end of stream between frames.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtocolError> {
        let mut header = [0u8; HEADER_LEN];
        match self.inner.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(ProtocolError::Io(e)),
        }
        let len = payload_len(header)?;
        self.buf.resize(len, 0);
        self.inner
            .read_exact(&mut self.buf)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => ProtocolError::Truncated,
                _ => ProtocolError::Io(e),
            })?;
        decode_payload(&self.buf).map(Some)
    }
}

/// Writes frames to a byte stream.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter { inner }
    }

    pub async fn write<T: Serialize>(&mut self, message: &T) -> Result<(), ProtocolError> {
        let frame = encode_frame(message)?;
        self.write_raw(&frame).await
    }

    /// Writes an already encoded frame (from [`encode_frame`]).
    pub async fn write_raw(&mut self, frame: &[u8]) -> Result<(), ProtocolError> {
        self.inner.write_all(frame).await?;
        self.inner.flush().await?;
        Ok(())
    }

    pub async fn shutdown(&mut self) -> Result<(), ProtocolError> {
        self.inner.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Event, ExitStatus, Request};
    use serde_bytes::ByteBuf;

    #[test]
    fn round_trip_binary_output() {
        let data: Vec<u8> = (0..=255u8).collect();
        let event = Event::Stdout {
            id: 7,
            data: ByteBuf::from(data.clone()),
        };
        let frame = encode_frame(&event).unwrap();
        // Binary data is carried as is: the frame is barely larger than the data.
        assert!(
            frame.len() < data.len() + 16,
            "frame is {} bytes",
            frame.len()
        );
        let (decoded, used): (Event, usize) = decode_frame(&frame).unwrap().unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(decoded, event);
    }

    #[test]
    fn partial_frames_need_more_bytes() {
        let frame = encode_frame(&Request::Ping { id: 1 }).unwrap();
        for cut in 0..frame.len() {
            assert!(decode_frame::<Request>(&frame[..cut]).unwrap().is_none());
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut frame = (u32::MAX).to_le_bytes().to_vec();
        frame.extend_from_slice(&[0; 8]);
        let err = decode_frame::<Request>(&frame).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }), "{err}");
    }

    #[test]
    fn oversized_message_is_refused_when_encoding() {
        let event = Event::Stdout {
            id: 1,
            data: ByteBuf::from(vec![0u8; MAX_FRAME_LEN + 1]),
        };
        assert!(matches!(
            encode_frame(&event),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn garbage_payload_is_an_error_not_a_panic() {
        for payload in [&[0xffu8; 3][..], &[200, 1, 2, 3], &[0x05], &[]] {
            let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(payload);
            assert!(decode_frame::<Request>(&frame).is_err(), "{payload:?}");
            assert!(decode_frame::<Event>(&frame).is_err(), "{payload:?}");
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut payload = postcard::to_stdvec(&Request::Ping { id: 1 }).unwrap();
        payload.push(0);
        assert!(matches!(
            decode_payload::<Request>(&payload),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn reader_reports_truncation_and_clean_eof() {
        let frame = encode_frame(&Event::Exited {
            id: 3,
            status: ExitStatus::Code(2),
            timed_out: false,
        })
        .unwrap();
        let mut reader = FrameReader::new(&frame[..frame.len() - 1]);
        assert!(matches!(
            reader.read::<Event>().await,
            Err(ProtocolError::Truncated)
        ));
        let mut reader = FrameReader::new(&frame[..]);
        assert!(reader.read::<Event>().await.unwrap().is_some());
        assert!(reader.read::<Event>().await.unwrap().is_none());
    }
}
