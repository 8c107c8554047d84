//! The versioned handshake that opens every connection.
//!
//! The host sends [`Hello`] with the range of versions it speaks; the agent answers with the
//! highest version both speak, or a refusal that names both ranges. These two messages are
//! frozen: their encoding must never change, so that any host can talk to any agent at least
//! far enough to learn that they cannot talk.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::ProtocolError;
use crate::frame::{FrameReader, FrameWriter};

/// Marks a connection as speaking this protocol.
pub const MAGIC: [u8; 4] = *b"AKPR";
/// Newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;
/// Oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// First message, host -> agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 4],
    pub min_version: u16,
    pub max_version: u16,
    /// Name and version of the sending software, for logs and errors.
    pub software: String,
}

/// Answer to [`Hello`], agent -> host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Accept {
        version: u16,
        software: String,
    },
    Reject {
        reason: String,
        min_version: u16,
        max_version: u16,
    },
}

/// What a successful handshake settled on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub version: u16,
    pub peer_software: String,
}

/// The highest version in both ranges.
pub fn negotiate(ours: (u16, u16), theirs: (u16, u16)) -> Result<u16, ProtocolError> {
    let low = ours.0.max(theirs.0);
    let high = ours.1.min(theirs.1);
    if low > high {
        return Err(ProtocolError::VersionMismatch {
            ours_min: ours.0,
            ours_max: ours.1,
            theirs_min: theirs.0,
            theirs_max: theirs.1,
        });
    }
    Ok(high)
}

/// This build's software string: `name/version`.
pub fn software(name: &str) -> String {
    format!("{name}/{}", env!("CARGO_PKG_VERSION"))
}

/// Host side: sends `Hello`, waits for the agent's answer.
pub async fn client_handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    software: String,
) -> Result<Negotiated, ProtocolError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    send_hello(writer, software).await?;
    read_hello_reply(reader).await
}

/// Host side, first half: sends `Hello`. Requests may follow before the answer
/// ([`read_hello_reply`]) only if they are encoded the same in every version from
/// [`MIN_PROTOCOL_VERSION`] to [`PROTOCOL_VERSION`]: the agent reads them in whichever version
/// it settles on, and drops them unread if it refuses.
pub(crate) async fn send_hello<W>(
    writer: &mut FrameWriter<W>,
    software: String,
) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin,
{
    writer
        .write(&Hello {
            magic: MAGIC,
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            software,
        })
        .await
}

/// Host side, second half: the agent's answer to `Hello`.
pub(crate) async fn read_hello_reply<R>(
    reader: &mut FrameReader<R>,
) -> Result<Negotiated, ProtocolError>
where
    R: AsyncRead + Unpin,
{
    match reader.read::<HelloReply>().await? {
        None => Err(ProtocolError::Closed),
        Some(HelloReply::Accept { version, software }) => {
            if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
                return Err(ProtocolError::Unexpected(format!(
                    "agent chose version {version}, outside {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
                )));
            }
            Ok(Negotiated {
                version,
                peer_software: software,
            })
        }
        Some(HelloReply::Reject {
            reason,
            min_version,
            max_version,
        }) => Err(ProtocolError::Refused(format!(
            "{reason} (agent speaks {min_version}..={max_version})"
        ))),
    }
}

/// Agent side: reads `Hello`, answers, and returns the settled version. A peer that does
/// not speak the protocol, or no common version, gets a refusal and an error.
pub async fn server_handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    software: String,
) -> Result<Negotiated, ProtocolError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello = reader.read::<Hello>().await?.ok_or(ProtocolError::Closed)?;
    if hello.magic != MAGIC {
        let _ = writer.write(&reject("bad magic")).await;
        return Err(ProtocolError::BadMagic);
    }
    match negotiate(
        (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
        (hello.min_version, hello.max_version),
    ) {
        Ok(version) => {
            writer
                .write(&HelloReply::Accept { version, software })
                .await?;
            Ok(Negotiated {
                version,
                peer_software: hello.software,
            })
        }
        Err(e) => {
            let _ = writer.write(&reject("no common protocol version")).await;
            Err(e)
        }
    }
}

fn reject(reason: &str) -> HelloReply {
    HelloReply::Reject {
        reason: reason.to_string(),
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_highest_common_version() {
        assert_eq!(negotiate((1, 3), (2, 5)).unwrap(), 3);
        assert_eq!(negotiate((1, 1), (1, 1)).unwrap(), 1);
        assert!(matches!(
            negotiate((1, 2), (3, 4)),
            Err(ProtocolError::VersionMismatch { .. })
        ));
    }

    #[tokio::test]
    async fn handshake_succeeds_between_matching_sides() {
        let (a, b) = tokio::io::duplex(4096);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let server = tokio::spawn(async move {
            server_handshake(
                &mut FrameReader::new(br),
                &mut FrameWriter::new(bw),
                "agent/1".into(),
            )
            .await
        });
        let client = client_handshake(
            &mut FrameReader::new(ar),
            &mut FrameWriter::new(aw),
            "host/1".into(),
        )
        .await
        .unwrap();
        assert_eq!(client.version, PROTOCOL_VERSION);
        assert_eq!(client.peer_software, "agent/1");
        assert_eq!(server.await.unwrap().unwrap().peer_software, "host/1");
    }

    #[tokio::test]
    async fn future_only_client_is_refused_clearly() {
        let (a, b) = tokio::io::duplex(4096);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let server = tokio::spawn(async move {
            server_handshake(
                &mut FrameReader::new(br),
                &mut FrameWriter::new(bw),
                "agent/1".into(),
            )
            .await
        });
        let mut writer = FrameWriter::new(aw);
        writer
            .write(&Hello {
                magic: MAGIC,
                min_version: 90,
                max_version: 99,
                software: "future".into(),
            })
            .await
            .unwrap();
        let reply = FrameReader::new(ar).read::<HelloReply>().await.unwrap();
        assert!(matches!(reply, Some(HelloReply::Reject { .. })));
        assert!(matches!(
            server.await.unwrap(),
            Err(ProtocolError::VersionMismatch { .. })
        ));
    }

    #[tokio::test]
    async fn wrong_magic_is_refused() {
        let (a, b) = tokio::io::duplex(4096);
        let (_ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let mut writer = FrameWriter::new(aw);
        writer
            .write(&Hello {
                magic: *b"HTTP",
                min_version: 1,
                max_version: 1,
                software: String::new(),
            })
            .await
            .unwrap();
        let result = server_handshake(
            &mut FrameReader::new(br),
            &mut FrameWriter::new(bw),
            "agent".into(),
        )
        .await;
        assert!(matches!(result, Err(ProtocolError::BadMagic)));
    }
}
