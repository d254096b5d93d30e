//! The cluster's only encoding: bincode 1.3 (fixed-width integers, little-endian), for frames
//! on the cluster transport, raft log entries, blobs, snapshots, and the groups' own commands.
//! Groups (the metadata machine, replicated queues) serialise their commands through
//! [`encode`] and [`decode`] so one set of options holds everywhere.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame either side accepts; a larger length prefix closes the connection. Raft
/// batches are capped well below it (`max_payload_entries`, snapshot chunks of 1 MiB).
pub const MAX_FRAME_BYTES: u32 = 64 << 20;
/// The largest command a group takes: half a frame, so that an entry always fits in an
/// `AppendEntries` with room to spare (a larger one could never be replicated, and would stall
/// every follower behind it).
pub const MAX_COMMAND_BYTES: usize = MAX_FRAME_BYTES as usize / 2;

/// Bytes that do not decode as the expected type.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {what}: {reason}")]
pub struct DecodeError {
    pub what: &'static str,
    pub reason: String,
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
}

/// Encodes `value`, of any size: a snapshot of a long queue is larger than a frame, and only
/// frames have a size limit (checked where they are written). Our types have no maps with
/// non-string keys or other shapes bincode refuses, so failure is a bug.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    options()
        .serialize(value)
        .expect("cluster types always encode with bincode")
}

/// Decodes a `T` that must fill `bytes` exactly. The limit is the input's own length: a
/// length prefix in damaged or hostile bytes cannot make the decoder reserve more than that.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    options()
        .with_limit(bytes.len() as u64)
        .reject_trailing_bytes()
        .deserialize(bytes)
        .map_err(|e| DecodeError {
            what,
            reason: e.to_string(),
        })
}

/// Writes one frame: `u32` big-endian length, then the bincode body.
pub(crate) async fn write_frame<W, T>(w: &mut W, value: &T) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = encode(value);
    let len = u32::try_from(body.len())
        .ok()
        .filter(|n| *n <= MAX_FRAME_BYTES)
        .ok_or_else(|| std::io::Error::other(format!("frame of {} bytes", body.len())))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&body).await
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub(crate) async fn read_frame<R, T>(r: &mut R) -> std::io::Result<Option<T>>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the {MAX_FRAME_BYTES}-byte limit"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    decode("cluster frame", &body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_is_a_big_endian_length_then_the_bincode_body() {
        let mut out = Vec::new();
        write_frame(&mut out, &(7u32, String::from("ab")))
            .await
            .unwrap();
        assert_eq!(
            out,
            [0, 0, 0, 14, 7, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, b'a', b'b']
        );
        let back: Option<(u32, String)> = read_frame(&mut out.as_slice()).await.unwrap();
        assert_eq!(back, Some((7, "ab".into())));
    }

    #[tokio::test]
    async fn a_length_over_the_limit_is_refused_before_reading_the_body() {
        let bytes = (MAX_FRAME_BYTES + 1).to_be_bytes();
        let err = read_frame::<_, u32>(&mut bytes.as_slice())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_torn_frame_is_an_error_and_a_clean_end_is_none() {
        let mut out = Vec::new();
        write_frame(&mut out, &5u64).await.unwrap();
        assert!(read_frame::<_, u64>(&mut &out[..6]).await.is_err());
        assert_eq!(read_frame::<_, u64>(&mut &out[..0]).await.unwrap(), None);
    }

    #[test]
    fn bytes_left_over_after_a_value_are_refused() {
        let mut bytes = encode(&3u32);
        bytes.push(0);
        assert!(decode::<u32>("test value", &bytes).is_err());
    }
}
