//! The little RESP client of the harness: commands encoded and replies read
//! whole with redis-protocol.

use std::io::{self, Read};

use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame as Resp2Frame};
use redis_protocol::{resp2, resp3};

use super::invalid_data;

/// A command as a RESP array of bulk strings (redis-protocol's encoder).
pub(super) fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let bulks: Vec<BorrowedFrame<'_>> = args
        .iter()
        .map(|arg| BorrowedFrame::BulkString(arg))
        .collect();
    let frame = BorrowedFrame::Array(&bulks);
    let mut out = vec![0; frame.encode_len(false)];
    let written = resp2::encode::encode_borrowed(&mut out, &frame, false)
        .expect("the buffer has the frame's encoded length");
    out.truncate(written);
    out
}

/// Replies read off a connection one whole RESP frame at a time, with
/// redis-protocol's decoder. Bytes past a reply (pipelined replies) stay for
/// the next one.
pub(super) struct Replies<R> {
    source: R,
    buffer: Vec<u8>,
}

impl<R: Read> Replies<R> {
    pub(super) fn new(source: R) -> Self {
        Replies {
            source,
            buffer: Vec::new(),
        }
    }

    /// The raw bytes of the next reply (RESP2, and RESP3's types should
    /// `HELLO 3` be sent).
    pub(super) fn next(&mut self) -> io::Result<Vec<u8>> {
        let mut chunk = [0; 16 * 1024];
        loop {
            if let Some(len) = frame_len(&self.buffer)? {
                return Ok(self.buffer.drain(..len).collect());
            }
            let n = self.source.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a whole reply",
                ));
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The length of the whole frame at the start of `buf`, `None` if more bytes
/// are needed. RESP2 first; a frame RESP2 does not know (a map after `HELLO 3`)
/// is tried as RESP3.
fn frame_len(buf: &[u8]) -> io::Result<Option<usize>> {
    match resp2::decode::decode_range(buf) {
        Ok(found) => Ok(found.map(|(_, len)| len)),
        Err(resp2_error) => match resp3::decode::complete::decode_range(buf) {
            Ok(found) => Ok(found.map(|(_, len)| len)),
            Err(_) => Err(invalid_data(&format!("malformed reply: {resp2_error}"))),
        },
    }
}

/// The text of a bulk-string reply, or the error the server replied.
pub(super) fn bulk_string(reply: &[u8]) -> io::Result<String> {
    match resp2::decode::decode(reply) {
        Ok(Some((Resp2Frame::BulkString(body), _))) => {
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        _ => Err(io::Error::other(format!(
            "unexpected reply: {}",
            String::from_utf8_lossy(reply).trim_end()
        ))),
    }
}
