//! Replay against real `redis-server` processes started by the test harness
//! (never the shared Redis at 6379).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tickbus::replay::{OnTrimmed, ReplayOptions, StopAt};
use tickbus::test_util::RedisServer;
use tickbus::{Bus, DurableOptions, ErrorKind, LiveBus, RedisConfig, StartAt, StreamId};

const PATIENCE: Duration = Duration::from_secs(30);

fn live_bus(server: &RedisServer) -> LiveBus {
    let mut config = RedisConfig::from_url(&server.url()).unwrap();
    config.read_block = Duration::from_millis(200);
    Bus::builder().redis(config).build().unwrap()
}

fn quiet() -> DurableOptions {
    DurableOptions {
        receive_remote: false,
        ..Default::default()
    }
}

/// `XRANGE key - +` through redis-cli: the stream ids, oldest first.
fn xrange_ids(server: &RedisServer, key: &str) -> Vec<StreamId> {
    let out = server.cli(&["XRANGE", key, "-", "+"]).unwrap();
    out.lines()
        .filter_map(|line| line.trim().parse::<StreamId>().ok())
        .collect()
}

fn replay_all(
    bus: &LiveBus,
    topics: &[&str],
    options: ReplayOptions,
) -> Vec<tickbus::recording::ReplayedEvent> {
    let mut replay = bus.replay(topics, options).unwrap();
    let mut events = Vec::new();
    while let Some(event) = replay.recv_blocking() {
        events.push(event.unwrap());
    }
    events
}

#[test]
fn several_topics_merge_in_stream_id_order_as_plain_xrange_says() {
    let server = RedisServer::start().unwrap();
    let a = live_bus(&server);
    let b = live_bus(&server);
    let topics = ["md:tick", "md:book", "execution:fill"];
    // Two instances writing three topics at once: ids interleave, many share a ms.
    let writers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, bus)| {
            std::thread::spawn(move || {
                let handles: Vec<_> = topics
                    .iter()
                    .map(|t| bus.durable_topic::<(u64, u64)>(t, quiet()).unwrap())
                    .collect();
                let mut last = None;
                for i in 0..3_000_u64 {
                    let topic = &handles[(i % 3) as usize];
                    last = Some(topic.publish_durable((w as u64, i)).unwrap());
                }
                last.unwrap().wait_timeout(PATIENCE).unwrap();
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let mut reference: Vec<(StreamId, String)> = Vec::new();
    for topic in topics {
        for id in xrange_ids(&server, &format!("tickbus:stream:{{{topic}}}")) {
            reference.push((id, topic.to_string()));
        }
    }
    reference.sort();
    assert_eq!(reference.len(), 6_000);
    for page in [1_000, 7] {
        let events = replay_all(
            &a,
            &["md:*", "execution:fill"],
            ReplayOptions {
                page,
                ..Default::default()
            },
        );
        let got: Vec<(StreamId, String)> = events
            .iter()
            .map(|e| (e.stream_id, e.topic.to_string()))
            .collect();
        assert_eq!(got, reference, "page {page}");
        // The payloads decode, and each writer's events keep their order per topic.
        let mut last = std::collections::HashMap::new();
        for event in &events {
            let (w, i): (u64, u64) = event.decode().unwrap();
            let previous = last.insert((w, event.topic.to_string()), i);
            assert!(previous.is_none_or(|p| p < i));
        }
    }
    // The same range twice: the same sequence.
    let again = replay_all(&b, &["md:*", "execution:fill"], ReplayOptions::default());
    assert_eq!(
        again
            .iter()
            .map(|e| (e.stream_id, e.topic.to_string()))
            .collect::<Vec<_>>(),
        reference
    );
}

#[test]
fn ranges_by_id_and_by_time_are_inclusive() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let topic = bus.durable_topic::<u64>("md:tick", quiet()).unwrap();
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(
            topic
                .publish_durable(i)
                .unwrap()
                .wait_timeout(PATIENCE)
                .unwrap(),
        );
    }
    let events = replay_all(
        &bus,
        &["md:tick"],
        ReplayOptions {
            from: StartAt::At(ids[10]),
            to: StopAt::Id(ids[19]),
            ..Default::default()
        },
    );
    let values: Vec<u64> = events.iter().map(|e| e.decode().unwrap()).collect();
    assert_eq!(values, (10..20).collect::<Vec<_>>());
    // `After` leaves its id out; `New` replays nothing stored; `Resume` is refused.
    let events = replay_all(
        &bus,
        &["md:tick"],
        ReplayOptions {
            from: StartAt::After(ids[10]),
            to: StopAt::Id(ids[19]),
            ..Default::default()
        },
    );
    let values: Vec<u64> = events.iter().map(|e| e.decode().unwrap()).collect();
    assert_eq!(values, (11..20).collect::<Vec<_>>());
    let from_now = ReplayOptions {
        from: StartAt::New,
        ..Default::default()
    };
    assert!(replay_all(&bus, &["md:tick"], from_now).is_empty());
    let resume = ReplayOptions {
        from: StartAt::Resume,
        ..Default::default()
    };
    let refused = bus.replay(&["md:tick"], resume).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidConfig);
    let at = |id: StreamId| UNIX_EPOCH + Duration::from_millis(id.ms);
    let events = replay_all(
        &bus,
        &["md:tick"],
        ReplayOptions {
            from: StartAt::Time(at(ids[30])),
            to: StopAt::Time(at(ids[40])),
            ..Default::default()
        },
    );
    let first = events.first().unwrap().stream_id;
    let last = events.last().unwrap().stream_id;
    assert!(first.ms == ids[30].ms && first <= ids[30]);
    assert!(last.ms == ids[40].ms && last >= ids[40]);
    // `End` is the newest entry when the replay starts: later ones are not in it.
    let mut replay = bus.replay(&["md:tick"], ReplayOptions::default()).unwrap();
    topic
        .publish_durable(100)
        .unwrap()
        .wait_timeout(PATIENCE)
        .unwrap();
    let mut n = 0;
    while let Some(event) = replay.recv_blocking() {
        event.unwrap();
        n += 1;
    }
    assert_eq!(n, 100);
}

#[test]
fn a_trimmed_range_is_an_error_or_a_reported_gap() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let topic = bus.durable_topic::<u64>("md:tick", quiet()).unwrap();
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(
            topic
                .publish_durable(i)
                .unwrap()
                .wait_timeout(PATIENCE)
                .unwrap(),
        );
    }
    server
        .cli(&["XTRIM", "tickbus:stream:{md:tick}", "MAXLEN", "10"])
        .unwrap();
    let from_early = ReplayOptions {
        from: StartAt::At(ids[5]),
        ..Default::default()
    };
    let error = bus.replay(&["md:tick"], from_early).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Trimmed);
    assert!(error.message().contains(&ids[90].to_string()), "{error}");
    let mut replay = bus
        .replay(
            &["md:tick"],
            ReplayOptions {
                on_trimmed: OnTrimmed::Report,
                ..from_early
            },
        )
        .unwrap();
    assert_eq!(replay.gaps().len(), 1);
    assert_eq!(replay.gaps()[0].requested, ids[5]);
    assert_eq!(replay.gaps()[0].first_retained, Some(ids[90]));
    let mut values = Vec::new();
    while let Some(event) = replay.recv_blocking() {
        values.push(event.unwrap().decode::<u64>().unwrap());
    }
    assert_eq!(values, (90..100).collect::<Vec<_>>());
    // From a retained id, or from the beginning: no gap, no error.
    let replay = bus
        .replay(
            &["md:tick"],
            ReplayOptions {
                from: StartAt::At(ids[95]),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(replay.gaps().is_empty());
    assert!(bus.replay(&["md:tick"], ReplayOptions::default()).is_ok());
    let _ = SystemTime::now();
}

#[test]
fn a_foreign_entry_is_an_error_item_and_the_replay_goes_on() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let topic = bus.durable_topic::<u64>("md:tick", quiet()).unwrap();
    topic
        .publish_durable(1)
        .unwrap()
        .wait_timeout(PATIENCE)
        .unwrap();
    server
        .cli(&["XADD", "tickbus:stream:{md:tick}", "*", "price", "3150.5"])
        .unwrap();
    topic
        .publish_durable(2)
        .unwrap()
        .wait_timeout(PATIENCE)
        .unwrap();
    let mut replay = bus.replay(&["md:tick"], ReplayOptions::default()).unwrap();
    assert_eq!(
        replay
            .recv_blocking()
            .unwrap()
            .unwrap()
            .decode::<u64>()
            .unwrap(),
        1
    );
    let error = replay.recv_blocking().unwrap().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Malformed);
    assert!(error.message().contains("not a tickbus entry"));
    assert_eq!(
        replay
            .recv_blocking()
            .unwrap()
            .unwrap()
            .decode::<u64>()
            .unwrap(),
        2
    );
    assert!(replay.recv_blocking().is_none());
}

#[test]
fn catch_up_then_live_has_no_gap_and_no_duplicate_at_the_seam() {
    let server = RedisServer::start().unwrap();
    let reader = live_bus(&server);
    const PER_WRITER: u64 = 50_000;
    let started = std::sync::Arc::new(std::sync::Barrier::new(3));
    let writers: Vec<_> = (0..2_u64)
        .map(|w| {
            let bus = live_bus(&server);
            let started = started.clone();
            std::thread::spawn(move || {
                let topic = bus.durable_topic::<(u64, u64)>("md:tick", quiet()).unwrap();
                let mut last = None;
                for i in 0..PER_WRITER {
                    if i == PER_WRITER / 5 {
                        started.wait(); // the replay starts while we keep publishing
                    }
                    last = Some(topic.publish_durable((w, i)).unwrap());
                }
                last.unwrap().wait_timeout(PATIENCE).unwrap();
            })
        })
        .collect();
    started.wait();
    let mut replay = reader
        .replay(
            &["md:tick"],
            ReplayOptions {
                to: StopAt::Live,
                ..Default::default()
            },
        )
        .unwrap();
    let mut next = [0_u64; 2];
    let mut previous = StreamId::ZERO;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while next.iter().sum::<u64>() < 2 * PER_WRITER {
        assert!(std::time::Instant::now() < deadline, "stuck at {next:?}");
        let event = replay
            .recv_blocking()
            .expect("a live replay does not end")
            .unwrap();
        assert!(event.stream_id > previous, "stream order, no duplicate");
        previous = event.stream_id;
        let (w, i): (u64, u64) = event.decode().unwrap();
        assert_eq!(i, next[w as usize], "writer {w}: a gap or a duplicate");
        next[w as usize] += 1;
    }
    for writer in writers {
        writer.join().unwrap();
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Fill {
    order_id: u64,
    symbol: String,
    qty: f64,
    px: f64,
}

#[test]
fn an_export_of_100k_events_imports_back_identical() {
    use tickbus::recording::{export, import, RecordingFormat};
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let fills = bus
        .durable_topic::<Fill>("execution:fill", quiet())
        .unwrap();
    let ticks = bus.durable_topic::<u64>("md:tick", quiet()).unwrap();
    let mut last = None;
    for i in 0..50_000_u64 {
        fills
            .publish(Fill {
                order_id: i,
                symbol: "ETH-USD".into(),
                qty: i as f64 * 0.5,
                px: 3_150.25,
            })
            .unwrap();
        last = Some(ticks.publish_durable(i).unwrap());
    }
    last.unwrap().wait_timeout(PATIENCE).unwrap();
    let recorded = replay_all(
        &bus,
        &["execution:fill", "md:tick"],
        ReplayOptions::default(),
    );
    assert_eq!(recorded.len(), 100_000);

    let mut file = Vec::new();
    let written = export(
        &mut file,
        RecordingFormat::MessagePack,
        recorded.iter().cloned().map(Ok),
    )
    .unwrap();
    assert_eq!(written, 100_000);
    let imported: Vec<_> = import(&file[..], RecordingFormat::MessagePack)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        imported, recorded,
        "identical events, payload bytes included"
    );

    // JSON lines: the same values (payload bytes may differ).
    let mut lines = Vec::new();
    export(
        &mut lines,
        RecordingFormat::JsonLines,
        recorded.iter().take(1_000).cloned().map(Ok),
    )
    .unwrap();
    let text = String::from_utf8(lines.clone()).unwrap();
    assert!(text
        .lines()
        .next()
        .unwrap()
        .contains("\"symbol\":\"ETH-USD\""));
    let back: Vec<_> = import(&lines[..], RecordingFormat::JsonLines)
        .collect::<Result<_, _>>()
        .unwrap();
    for (a, b) in recorded.iter().take(1_000).zip(&back) {
        assert_eq!(
            (
                a.topic.clone(),
                a.stream_id,
                a.event_id,
                a.source,
                a.timestamp_ns
            ),
            (
                b.topic.clone(),
                b.stream_id,
                b.event_id,
                b.source,
                b.timestamp_ns
            )
        );
        if a.topic.as_str() == "md:tick" {
            assert_eq!(a.decode::<u64>().unwrap(), b.decode::<u64>().unwrap());
        } else {
            assert_eq!(a.decode::<Fill>().unwrap(), b.decode::<Fill>().unwrap());
        }
    }

    // A truncated file: the events before the cut, then one clear error.
    let cut = &file[..file.len() - 3];
    let items: Vec<_> = import(cut, RecordingFormat::MessagePack).collect();
    assert_eq!(items.len(), 100_000);
    assert!(items[..99_999].iter().all(|item| item.is_ok()));
    let error = items[99_999].as_ref().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Malformed);
    assert!(error.message().contains("record 99999"), "{error}");
    // Garbage: an error, no panic.
    let garbage: Vec<_> = import(&[0xc1_u8, 0, 1, 2][..], RecordingFormat::MessagePack).collect();
    assert_eq!(garbage.len(), 1);
    assert!(garbage[0].is_err());
}

#[test]
fn headers_reach_replayed_events_and_recordings_keep_them() {
    use tickbus::recording::{export, import, RecordingFormat};
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    // {"trace": "abc", "tenant": "eu"} from another writer; then an entry without `h`.
    for h in [&b"\x82\xa5trace\xa3abc\xa6tenant\xa2eu"[..], b""] {
        let mut args: Vec<&[u8]> = vec![
            b"XADD",
            b"tickbus:stream:{md:tick}",
            b"*",
            b"id",
            b"0190b2a4-0000-7000-8000-000000000009",
            b"src",
            b"0190b2a4-0000-7000-8000-0000000000ff",
            b"ts",
            b"9",
            b"data",
            &[0x2a],
        ];
        if !h.is_empty() {
            args.extend([&b"h"[..], h]);
        }
        server.command(&args).unwrap();
    }
    let expected = vec![
        ("trace".to_string(), "abc".to_string()),
        ("tenant".to_string(), "eu".to_string()),
    ];
    let events = replay_all(&bus, &["md:tick"], ReplayOptions::default());
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].headers(), expected);
    assert!(events[1].headers().is_empty());
    assert_eq!(events[0].decode::<u64>().unwrap(), 42);
    for format in [RecordingFormat::MessagePack, RecordingFormat::JsonLines] {
        let mut file = Vec::new();
        export(&mut file, format, events.iter().cloned().map(Ok)).unwrap();
        let back: Vec<_> = import(&file[..], format)
            .collect::<tickbus::Result<_>>()
            .unwrap();
        assert_eq!(back, events, "{format:?}");
    }
}
