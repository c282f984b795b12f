//! The transport and the wire encoder against a real server: entries appended
//! by every path of `Connection::append` parse back as written. It lives here,
//! in the test harness's layer, because it needs both a `RedisServer` and the
//! crate's internals (`tests/architecture.rs`: nothing below may use
//! `test_util`).

use std::sync::Arc;

use bytes::Bytes;

use crate::config::RedisConfig;
use crate::event::{EventId, InstanceId};
use crate::test_util::RedisServer;
use crate::transport::redis::Connection;
use crate::transport::WireEntry;
use crate::wire::{self, EntryLimits};

/// Every branch of the append script (with and without `MAXLEN`, with and
/// without headers) and the plain `XADD`s write the entry the encoder
/// made, which the parser reads back the same.
#[test]
fn appended_entries_parse_back_with_their_headers() {
    let server = RedisServer::start().unwrap();
    let config = RedisConfig::from_url(&server.url()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (connection, _) = Connection::open(&config, "test").await.unwrap();
        let key: Arc<str> = Arc::from("tickbus:stream:{a:b}");
        let src = wire::source_field(InstanceId::from_uuid(uuid::Uuid::from_u128(9)));
        let limits = EntryLimits::default();
        let headers = vec![("trace".to_string(), "abc".to_string())];
        let mut written = Vec::new();
        for (n, max_len, with_headers) in [
            (1_u128, None, false),
            (2, None, true),
            (3, Some(100), false),
            (4, Some(100), true),
        ] {
            let event = wire::encode(
                EventId::from_uuid(uuid::Uuid::from_u128(n)),
                src.clone(),
                n as u64,
                Bytes::from(vec![n as u8]),
                if with_headers { &headers } else { &[] },
                &limits,
            )
            .unwrap();
            written.push((event.clone(), with_headers));
            let entry = WireEntry {
                key: Arc::clone(&key),
                event,
                max_len,
            };
            // Twice each: in a script chunk, and as plain XADDs.
            let entries = [&entry, &entry];
            for scripted in [true, false] {
                let (ids, _) = connection.append(&entries, None, scripted).await;
                assert!(ids.iter().all(Result::is_ok), "{ids:?}");
            }
        }
        let read = connection.range(&key, "-", "+", 100).await.unwrap();
        assert_eq!(read.len(), 16);
        for (raw, (event, with_headers)) in read.chunks(4).zip(&written) {
            for raw in raw {
                let names: Vec<&[u8]> =
                    raw.fields().iter().map(|(name, _)| name.as_ref()).collect();
                let expected: &[&[u8]] = if *with_headers {
                    &[b"id", b"src", b"ts", b"data", b"h"]
                } else {
                    &[b"id", b"src", b"ts", b"data"]
                };
                assert_eq!(names, expected, "no empty `h` is ever written");
                let parsed = wire::parse(raw.fields(), &limits).unwrap();
                assert_eq!(&parsed.payload[..], &event.data[..]);
                assert_eq!(parsed.timestamp_ns, event.ts);
                let want: &[(String, String)] = if *with_headers { &headers } else { &[] };
                assert_eq!(parsed.headers, want);
            }
        }
    });
}
