//! The local bus's guarantees, end to end through the public API: ordering, lag,
//! backpressure, shutdown, patterns, metadata, and non-`Copy` payloads under
//! overwrite.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use tickbus::{
    Bus, BusySpin, Clock, ErrorKind, Headers, InstanceId, PublishError, RecvError, SlowPolicy,
    SpinThenYield, SubscribeOptions, TopicOptions, TryPublishError, TryRecvError,
};

const BACKPRESSURE: SubscribeOptions = SubscribeOptions::with_policy(SlowPolicy::Backpressure);

fn small(capacity: usize) -> TopicOptions {
    TopicOptions {
        capacity,
        ..TopicOptions::default()
    }
}

#[test]
fn every_subscriber_sees_one_order_with_several_publishers() {
    const PUBLISHERS: u64 = 3;
    const PER_PUBLISHER: u64 = 20_000;
    let bus = Bus::builder().build().unwrap();
    let topic = bus
        .topic_with::<(u64, u64)>("fills:all", small(256))
        .unwrap();
    let subscribers: Vec<_> = (0..2)
        .map(|_| topic.subscribe_with(BACKPRESSURE).unwrap())
        .collect();
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|mut sub| {
            thread::spawn(move || {
                let mut seen = Vec::with_capacity((PUBLISHERS * PER_PUBLISHER) as usize);
                let mut wait = SpinThenYield::default();
                while (seen.len() as u64) < PUBLISHERS * PER_PUBLISHER {
                    let event = sub.recv_blocking_with(&mut wait).unwrap();
                    assert_eq!(event.meta.seq(), seen.len() as u64, "sequence has no gaps");
                    seen.push(event.value);
                }
                seen
            })
        })
        .collect();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|publisher| {
            let topic = topic.clone();
            thread::spawn(move || {
                for n in 0..PER_PUBLISHER {
                    topic.publish((publisher, n)).unwrap();
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.join().unwrap();
    }
    let orders: Vec<Vec<(u64, u64)>> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(orders[0], orders[1], "both subscribers see the same order");
    for publisher in 0..PUBLISHERS {
        let own: Vec<u64> = orders[0]
            .iter()
            .filter(|e| e.0 == publisher)
            .map(|e| e.1)
            .collect();
        assert_eq!(
            own,
            (0..PER_PUBLISHER).collect::<Vec<_>>(),
            "publisher {publisher}'s order"
        );
    }
}

#[test]
fn a_lagging_subscriber_is_told_how_many_it_missed_and_goes_on() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic_with::<u64>("md:tick", small(8)).unwrap();
    let mut sub = topic.subscribe();
    for n in 0..20 {
        topic.publish(n).unwrap();
    }
    assert_eq!(sub.try_recv(), Err(TryRecvError::Lagged(12)));
    let rest: Vec<u64> = std::iter::from_fn(|| sub.try_recv().ok().map(|e| e.value)).collect();
    assert_eq!(rest, (12..20).collect::<Vec<_>>());
    topic.publish(20).unwrap();
    assert_eq!(
        sub.try_recv().unwrap().value,
        20,
        "still subscribed after the lag"
    );
}

#[test]
fn a_lagging_subscriber_never_grows_memory() {
    // Each payload holds a clone of `token`: the live count is the ring's content.
    let token = Arc::new(());
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic_with::<Arc<()>>("md:book", small(64)).unwrap();
    let _stalled = topic.subscribe();
    for _ in 0..100_000 {
        topic.publish(Arc::clone(&token)).unwrap();
    }
    assert_eq!(
        Arc::strong_count(&token),
        1 + 64,
        "the ring holds at most its capacity"
    );
    drop(topic);
    drop(_stalled);
    drop(bus);
    assert_eq!(
        Arc::strong_count(&token),
        1,
        "everything is released with the topic"
    );
}

#[test]
fn backpressure_hands_the_event_back_or_makes_the_publisher_wait() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic_with::<String>("order:new", small(4)).unwrap();
    let mut sub = topic.subscribe_with(BACKPRESSURE).unwrap();
    for n in 0..4 {
        topic.try_publish(format!("order-{n}")).unwrap();
    }
    match topic.try_publish("order-4".to_string()) {
        Err(TryPublishError::Full(back)) => assert_eq!(back, "order-4"),
        other => panic!("expected Full, got {other:?}"),
    }
    // A blocking publisher waits for the subscriber instead of overwriting.
    let publisher = {
        let topic = topic.clone();
        thread::spawn(move || {
            for n in 4..100 {
                topic.publish(format!("order-{n}")).unwrap();
            }
        })
    };
    let mut wait = SpinThenYield::default();
    for n in 0..100 {
        let event = sub.recv_blocking_with(&mut wait).unwrap();
        assert_eq!(
            event.value,
            format!("order-{n}"),
            "nothing skipped, nothing reordered"
        );
    }
    publisher.join().unwrap();
}

#[test]
fn dropping_a_backpressure_subscriber_releases_a_blocked_publisher() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic_with::<u32>("risk:check", small(2)).unwrap();
    let sub = topic.subscribe_with(BACKPRESSURE).unwrap();
    topic.publish(1).unwrap();
    topic.publish(2).unwrap();
    let publisher = {
        let topic = topic.clone();
        thread::spawn(move || topic.publish(3))
    };
    drop(sub);
    assert_eq!(publisher.join().unwrap(), Ok(2));
}

#[test]
fn too_many_backpressure_subscribers_is_a_clear_error() {
    let bus = Bus::builder().build().unwrap();
    let options = TopicOptions {
        capacity: 8,
        max_backpressure_subscribers: 1,
        ..TopicOptions::default()
    };
    let topic = bus.topic_with::<u8>("job:categorize", options).unwrap();
    let _first = topic.subscribe_with(BACKPRESSURE).unwrap();
    let err = topic.subscribe_with(BACKPRESSURE).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(
        err.to_string().contains("max_backpressure_subscribers"),
        "{err}"
    );
    let _lagging_is_fine = topic.subscribe();
}

#[test]
fn shutdown_delivers_what_was_published_then_closes() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic::<u64>("pnl:calculated").unwrap();
    let mut sub = topic.subscribe();
    for n in 0..3 {
        topic.publish(n).unwrap();
    }
    bus.shutdown();
    assert!(bus.is_shut_down());
    let drained: Vec<u64> = (0..3).map(|_| sub.try_recv().unwrap().value).collect();
    assert_eq!(drained, [0, 1, 2]);
    assert_eq!(sub.try_recv(), Err(TryRecvError::Closed));
    assert_eq!(
        topic.publish(9).unwrap_err(),
        PublishError::Closed(9),
        "the event is handed back"
    );
    assert_eq!(
        bus.topic::<u64>("pnl:other").unwrap_err().kind(),
        ErrorKind::Closed
    );
}

#[test]
fn shutdown_wakes_a_parked_subscriber() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic::<u64>("strategy:instructions").unwrap();
    let mut sub = topic.subscribe();
    let parked = thread::spawn(move || sub.recv_blocking());
    bus.shutdown();
    assert_eq!(parked.join().unwrap().unwrap_err(), RecvError::Closed);
}

#[test]
fn dropping_the_last_bus_handle_closes_topics() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic::<u8>("system:health").unwrap();
    let mut sub = topic.subscribe();
    topic.publish(1).unwrap();
    let clone = bus.clone();
    drop(bus);
    assert!(topic.publish(2).is_ok(), "a clone still holds the bus open");
    drop(clone);
    assert!(topic.publish(3).is_err());
    assert_eq!(sub.try_recv().unwrap().value, 1);
    assert_eq!(sub.try_recv().unwrap().value, 2);
    assert_eq!(sub.try_recv(), Err(TryRecvError::Closed));
}

#[test]
fn a_parked_subscriber_wakes_for_each_publish() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic::<u64>("exposure:calculated").unwrap();
    let mut sub = topic.subscribe();
    let reader = thread::spawn(move || {
        // Parks right away: every event must come through the wake-up path.
        let mut park_at_once = tickbus::SpinYieldPark::new(0, 0);
        (0..1000)
            .map(|_| sub.recv_blocking_with(&mut park_at_once).unwrap().value)
            .sum::<u64>()
    });
    for n in 0..1000 {
        topic.publish(n).unwrap();
        if n % 100 == 0 {
            thread::yield_now();
        }
    }
    assert_eq!(reader.join().unwrap(), (0..1000).sum::<u64>());
}

#[test]
fn topics_check_names_and_types() {
    let bus = Bus::builder().build().unwrap();
    for bad in [
        "Position:Updated",
        "position",
        "orders:{eu}",
        "a b:c",
        "x:y*",
        "a:b\0",
    ] {
        assert_eq!(
            bus.topic::<u8>(bad).unwrap_err().kind(),
            ErrorKind::InvalidTopic,
            "{bad:?}"
        );
    }
    let long = format!("a:{}", "b".repeat(10 * 1024));
    assert_eq!(
        bus.topic::<u8>(&long).unwrap_err().kind(),
        ErrorKind::InvalidTopic
    );
    let positions = bus.topic::<f64>("position:updated").unwrap();
    let err = bus.topic::<String>("position:updated").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TopicTypeMismatch);
    assert!(
        err.to_string().contains("f64") && err.to_string().contains("String"),
        "{err}"
    );
    // The same name and type is the same topic.
    let again = bus.topic::<f64>("position:updated").unwrap();
    let mut sub = positions.subscribe();
    again.publish(1.5).unwrap();
    assert_eq!(sub.try_recv().unwrap().value, 1.5);
    assert_eq!(bus.topic_names().len(), 1);
    assert_eq!(
        bus.topic_with::<u8>("a:b", small(0)).unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
    let huge = TopicOptions {
        capacity: 8,
        max_backpressure_subscribers: usize::MAX,
        ..TopicOptions::default()
    };
    let err = bus.topic_with::<u8>("a:c", huge).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidConfig,
        "an error, not an allocation failure"
    );
    assert!(err.to_string().contains("topic a:c"), "{err}");
    assert!(Bus::builder().topic_options(huge).build().is_err());
}

/// Headers given to `publish_with_headers` reach plain and pattern subscribers
/// (shared, not copied); events published without them carry none.
#[test]
fn headers_reach_plain_and_pattern_subscribers() {
    let bus = Bus::builder().build().unwrap();
    let orders = bus.topic::<u32>("trading:order").unwrap();
    let mut plain = orders.subscribe();
    let mut pattern = bus.subscribe_pattern("trading:>").unwrap();
    let headers: Headers = [("trace", "7f3a"), ("trace", "7f3b")].into_iter().collect();
    orders.publish_with_headers(1, headers.clone()).unwrap();
    orders.publish(2).unwrap();

    let first = plain.try_recv().unwrap();
    assert_eq!(first.meta.headers(), &headers);
    assert_eq!(first.meta.headers().get("trace"), Some("7f3a"));
    assert!(plain.try_recv().unwrap().meta.headers().is_empty());

    let mut seen = Vec::new();
    for _ in 0..2 {
        pattern
            .try_recv_with(|event| seen.push(event.meta.headers().clone()))
            .unwrap();
    }
    assert_eq!(seen, [headers, Headers::new()]);
}

#[test]
fn pattern_subscribers_get_matching_topics_old_and_new() {
    let bus = Bus::builder().build().unwrap();
    let start = bus.topic::<u64>("trading:cycle:start").unwrap();
    let news = bus.topic::<String>("news:scrape:start").unwrap();
    let mut trading = bus.subscribe_pattern("trading:>").unwrap();
    let complete = bus.topic::<String>("trading:cycle:complete").unwrap();

    start.publish(1).unwrap();
    news.publish("ignored".into()).unwrap();
    complete.publish("done".into()).unwrap();

    let mut got = Vec::new();
    while let Ok(event) = trading.try_recv() {
        got.push(event);
    }
    assert_eq!(got.len(), 2);
    let start_event = got
        .iter()
        .find(|e| e.topic.as_str() == "trading:cycle:start")
        .unwrap();
    assert_eq!(start_event.downcast_ref::<u64>(), Some(&1));
    assert_eq!(
        start_event.downcast_ref::<String>(),
        None,
        "a wrong type is None, not a panic"
    );
    let complete_event = got
        .into_iter()
        .find(|e| e.topic.as_str() == "trading:cycle:complete");
    assert_eq!(
        complete_event.unwrap().downcast::<String>().unwrap(),
        "done"
    );
    assert_eq!(trading.topic_count(), 2);
    assert_eq!(
        bus.subscribe_pattern("trading:>:x").unwrap_err().kind(),
        ErrorKind::InvalidPattern
    );
}

#[test]
fn a_parked_pattern_subscriber_wakes_for_a_topic_created_later() {
    let bus = Bus::builder().build().unwrap();
    let mut all = bus.subscribe_pattern("*:calculated").unwrap();
    let reader = thread::spawn(move || {
        let first = all.recv_blocking().unwrap();
        let closed = all.recv_blocking();
        (
            first.topic.to_string(),
            first.downcast::<f64>().unwrap(),
            closed,
        )
    });
    let risk = bus.topic::<f64>("risk:calculated").unwrap();
    risk.publish(0.5).unwrap();
    bus.shutdown();
    let (topic, value, closed) = reader.join().unwrap();
    assert_eq!((topic.as_str(), value), ("risk:calculated", 0.5));
    assert_eq!(closed.unwrap_err(), RecvError::Closed);
}

#[test]
fn pattern_try_recv_with_lends_without_copying() {
    let bus = Bus::builder().build().unwrap();
    let mut sub = bus.subscribe_pattern(">").unwrap();
    let book = bus.topic::<Vec<u32>>("orderbook:btc").unwrap();
    book.publish(vec![1, 2, 3]).unwrap();
    let total = sub
        .try_recv_with(|event| {
            event
                .downcast_ref::<Vec<u32>>()
                .map(|v| v.iter().sum::<u32>())
        })
        .unwrap();
    assert_eq!(total, Some(6));
    assert_eq!(sub.try_recv_with(|_| ()).unwrap_err(), TryRecvError::Empty);
}

#[test]
fn metadata_ids_are_unique_ordered_and_reproducible() {
    let instance = InstanceId::from_uuid(uuid::Uuid::from_u128(0x1234));
    let make = || {
        let clock = Clock::manual(1_700_000_000_000_000_000);
        let bus = Bus::builder()
            .instance_id(instance)
            .clock(clock.clone())
            .build()
            .unwrap();
        let a = bus.topic_with::<u32>("a:one", small(1 << 14)).unwrap();
        let b = bus.topic_with::<u32>("b:two", small(1 << 14)).unwrap();
        let (mut sa, mut sb) = (a.subscribe(), b.subscribe());
        let mut ids = Vec::new();
        for n in 0..10_000 {
            clock.advance_ns(1_000);
            a.publish(n).unwrap();
            b.publish(n).unwrap();
            let (ea, eb) = (sa.try_recv().unwrap(), sb.try_recv().unwrap());
            assert_eq!(ea.meta.source(), instance);
            assert_eq!(
                ea.meta.timestamp_ns(),
                1_700_000_000_000_000_000 + (n as u64 + 1) * 1_000
            );
            ids.push(ea.meta.id());
            ids.push(eb.meta.id());
        }
        ids
    };
    let ids = make();
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "ids are unique across topics");
    let topic_a: Vec<_> = ids.iter().step_by(2).collect();
    assert!(
        topic_a.windows(2).all(|w| w[0] < w[1]),
        "ids are time-ordered within a topic"
    );
    assert!(ids.iter().all(|id| id.as_uuid().get_version_num() == 7));
    assert_eq!(
        ids,
        make(),
        "fixed instance and clock: the same ids (backtests)"
    );
}

/// A payload whose every byte depends on one number: a torn or freed read shows.
#[derive(Clone, Debug)]
struct Checked {
    n: u64,
    text: String,
    numbers: Vec<u64>,
}

impl Checked {
    fn new(n: u64) -> Self {
        Checked {
            n,
            text: format!("event-{n}-{}", "x".repeat((n % 37) as usize)),
            numbers: vec![n; 1 + (n % 13) as usize],
        }
    }
    fn is_intact(&self) -> bool {
        let expected = Checked::new(self.n);
        self.text == expected.text && self.numbers == expected.numbers
    }
}

#[test]
fn non_copy_payloads_survive_overwrite_under_contention() {
    const PER_PUBLISHER: u64 = 50_000;
    let bus = Bus::builder().build().unwrap();
    // A tiny ring so publishers lap the lagging readers constantly.
    let topic = bus
        .topic_with::<Checked>("stress:overwrite", small(4))
        .unwrap();
    let readers: Vec<_> = (0..2)
        .map(|reader| {
            let mut sub = topic.subscribe();
            thread::spawn(move || {
                let (mut received, mut missed) = (0u64, 0u64);
                loop {
                    let step = if reader == 0 {
                        sub.try_recv().map(|event| event.value.is_intact())
                    } else {
                        sub.try_recv_ref().map(|event| event.is_intact())
                    };
                    match step {
                        Ok(intact) => {
                            assert!(intact, "a torn or freed payload was read");
                            received += 1;
                        }
                        Err(TryRecvError::Lagged(n)) => missed += n,
                        Err(TryRecvError::Empty) => thread::yield_now(),
                        Err(TryRecvError::Closed) => return (received, missed),
                        Err(error) => panic!("unexpected {error}"),
                    }
                }
            })
        })
        .collect();
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            let topic = topic.clone();
            thread::spawn(move || {
                for n in 0..PER_PUBLISHER {
                    topic.publish(Checked::new(p * PER_PUBLISHER + n)).unwrap();
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.join().unwrap();
    }
    bus.shutdown();
    for reader in readers {
        let (received, missed) = reader.join().unwrap();
        assert_eq!(
            received + missed,
            2 * PER_PUBLISHER,
            "every event is received or counted as missed"
        );
        assert!(received > 0);
    }
}

static CLONES: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
struct CountsClones([u64; 8]);

impl Clone for CountsClones {
    fn clone(&self) -> Self {
        CountsClones::note_clone();
        CountsClones(self.0)
    }
}

impl CountsClones {
    fn note_clone() {
        CLONES.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn publishing_moves_and_borrowing_receives_never_clone() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic::<CountsClones>("md:l2").unwrap();
    let mut subs: Vec<_> = (0..3).map(|_| topic.subscribe()).collect();
    let before = CLONES.load(Ordering::Relaxed);
    for n in 0..100 {
        topic.publish(CountsClones([n; 8])).unwrap();
        for sub in &mut subs {
            assert_eq!(sub.try_recv_ref().unwrap().0[0], n);
        }
    }
    assert_eq!(
        CLONES.load(Ordering::Relaxed),
        before,
        "no clone on publish or borrow"
    );
    topic.publish(CountsClones([7; 8])).unwrap();
    assert_eq!(subs[0].try_recv().unwrap().value.0[0], 7);
    assert_eq!(
        CLONES.load(Ordering::Relaxed),
        before + 1,
        "try_recv clones exactly once"
    );
}

#[test]
fn busy_spin_receive_crosses_threads() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic::<u64>("md:trade").unwrap();
    let mut sub = topic.subscribe_with(BACKPRESSURE).unwrap();
    let reader = thread::spawn(move || {
        (0..10_000)
            .map(|_| sub.recv_blocking_with(&mut BusySpin).unwrap().value)
            .sum::<u64>()
    });
    for n in 0..10_000 {
        topic.publish(n).unwrap();
    }
    assert_eq!(reader.join().unwrap(), (0..10_000).sum::<u64>());
}

#[test]
fn a_publish_racing_shutdown_is_delivered_or_handed_back() {
    // Publishers keep publishing while the bus shuts down. Every publish that
    // returned Ok must reach the subscriber; every other one got its event back.
    for _ in 0..20 {
        let bus = Bus::builder().build().unwrap();
        let topic = bus.topic_with::<u64>("order:new", small(64)).unwrap();
        let mut sub = topic.subscribe_with(BACKPRESSURE).unwrap();
        let progress = Arc::new(AtomicUsize::new(0));
        let reader_progress = Arc::clone(&progress);
        let reader = thread::spawn(move || {
            let mut received = HashSet::new();
            loop {
                match sub.recv_blocking() {
                    Ok(event) => {
                        assert!(received.insert(event.value), "received twice");
                        reader_progress.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(RecvError::Closed) => return received,
                    Err(RecvError::Lagged(n)) => panic!("backpressure never lags ({n})"),
                    Err(error) => panic!("unexpected {error}"),
                }
            }
        });
        let publishers: Vec<_> = (0..2u64)
            .map(|p| {
                let topic = topic.clone();
                thread::spawn(move || {
                    let mut accepted = Vec::new();
                    for n in 0.. {
                        let value = p << 32 | n;
                        match topic.publish(value) {
                            Ok(_) => accepted.push(value),
                            Err(back) => {
                                assert_eq!(
                                    back.into_inner(),
                                    value,
                                    "the refused event is handed back"
                                );
                                return accepted;
                            }
                        }
                    }
                    unreachable!()
                })
            })
            .collect();
        // Let events flow, then close under the publishers' feet.
        while progress.load(Ordering::Relaxed) < 1_000 {
            thread::yield_now();
        }
        bus.shutdown();
        let accepted: HashSet<u64> = publishers
            .into_iter()
            .flat_map(|p| p.join().unwrap())
            .collect();
        let received = reader.join().unwrap();
        assert_eq!(
            received, accepted,
            "accepted events are exactly the delivered ones"
        );
    }
}

// ---------------------------------------------------------------------------
// The exclusive publisher and batch receive (a single-publisher topic)
// ---------------------------------------------------------------------------

fn exclusive(capacity: usize) -> TopicOptions {
    TopicOptions {
        capacity,
        exclusive_publisher: true,
        ..TopicOptions::default()
    }
}

#[test]
fn one_exclusive_publisher_at_a_time_and_the_handle_waits_its_turn() {
    let bus = Bus::builder().build().unwrap();
    let shared = bus.topic::<u64>("md:shared").unwrap();
    assert_eq!(
        shared.publisher().unwrap_err().kind(),
        ErrorKind::ExclusivePublisher,
        "a shared topic has no exclusive publisher"
    );
    let topic = bus.topic_with::<u64>("md:solo", exclusive(8)).unwrap();
    let mut sub = topic.subscribe();
    topic.publish(1).unwrap(); // no Publisher held: the handle takes the role once
    let mut publisher = topic.publisher().unwrap();
    let second = topic.publisher().unwrap_err();
    assert_eq!(second.kind(), ErrorKind::ExclusivePublisher);
    assert!(second.to_string().contains("md:solo"), "{second}");
    match topic.publish(2) {
        Err(PublishError::Rejected(2, error)) => {
            assert_eq!(error.kind(), ErrorKind::ExclusivePublisher);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(matches!(
        topic.try_publish(3),
        Err(TryPublishError::Rejected(3, _))
    ));
    assert_eq!(publisher.publish(4).unwrap(), 1);
    drop(publisher);
    assert_eq!(topic.publish(5).unwrap(), 2);
    let mut seen = Vec::new();
    sub.recv_batch(10, |event| seen.push((*event, event.meta().seq())))
        .unwrap();
    assert_eq!(seen, [(1, 0), (4, 1), (5, 2)]);
}

#[test]
fn exclusive_backpressure_never_loses_non_copy_events() {
    const N: u64 = 200_000;
    let bus = Bus::builder().build().unwrap();
    let topic = bus
        .topic_with::<Checked>("stress:solo", exclusive(64))
        .unwrap();
    let subscribers: Vec<_> = (0..2)
        .map(|reader| {
            let mut sub = topic.subscribe_with(BACKPRESSURE).unwrap();
            thread::spawn(move || {
                let mut next = 0u64;
                let mut check = |value: &Checked, seq: u64| {
                    assert!(value.is_intact(), "a torn or freed payload was read");
                    assert_eq!((value.n, seq), (next, next), "order or loss");
                    next += 1;
                };
                loop {
                    let result = if reader == 0 {
                        sub.recv_batch(17, |event| check(&event, event.meta().seq()))
                    } else {
                        sub.try_recv()
                            .map(|event| check(&event.value, event.meta.seq()))
                            .map(|()| 1)
                    };
                    match result {
                        Ok(_) => {}
                        Err(TryRecvError::Empty) => thread::yield_now(),
                        Err(TryRecvError::Closed) => return next,
                        Err(error) => panic!("unexpected {error}"),
                    }
                }
            })
        })
        .collect();
    let mut publisher = topic.publisher().unwrap();
    let mut n = 0;
    while n < N {
        if n % 3 == 0 {
            publisher.publish(Checked::new(n)).unwrap();
            n += 1;
        } else {
            let end = (n + 50).min(N);
            assert_eq!(
                publisher.publish_batch((n..end).map(Checked::new)).unwrap(),
                end - n
            );
            n = end;
        }
    }
    bus.shutdown();
    for subscriber in subscribers {
        assert_eq!(subscriber.join().unwrap(), N, "every event, in order");
    }
}

#[test]
fn exclusive_lag_subscribers_are_never_torn_and_count_what_they_missed() {
    const N: u64 = 200_000;
    let bus = Bus::builder().build().unwrap();
    // A tiny ring: the publisher laps the lag readers all the time.
    let topic = bus
        .topic_with::<Checked>("stress:solo", exclusive(4))
        .unwrap();
    let readers: Vec<_> = (0..2)
        .map(|reader| {
            let mut sub = topic.subscribe();
            thread::spawn(move || {
                let (mut received, mut missed, mut last) = (0u64, 0u64, None);
                loop {
                    let mut check = |value: &Checked| {
                        assert!(value.is_intact(), "a torn or freed payload was read");
                        assert!(last < Some(value.n), "out of order");
                        last = Some(value.n);
                        received += 1;
                    };
                    let result = match reader {
                        0 => sub.recv_batch(3, |event| check(&event)),
                        _ => sub.try_recv_ref().map(|event| check(&event)).map(|()| 1),
                    };
                    match result {
                        Ok(_) => {}
                        Err(TryRecvError::Lagged(n)) => missed += n,
                        Err(TryRecvError::Empty) => thread::yield_now(),
                        Err(TryRecvError::Closed) => return (received, missed, last),
                        Err(error) => panic!("unexpected {error}"),
                    }
                }
            })
        })
        .collect();
    let mut publisher = topic.publisher().unwrap();
    for n in 0..N {
        publisher.publish(Checked::new(n)).unwrap();
    }
    bus.shutdown();
    for reader in readers {
        let (received, missed, last) = reader.join().unwrap();
        assert_eq!(
            received + missed,
            N,
            "every event received or counted missed"
        );
        assert_eq!(last, Some(N - 1), "the newest event is never skipped");
    }
}

#[test]
fn a_parked_batch_receiver_wakes_and_close_ends_it() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic_with::<u64>("md:solo", exclusive(16)).unwrap();
    let mut sub = topic.subscribe_with(BACKPRESSURE).unwrap();
    let mut publisher = topic.publisher().unwrap();
    /// The default strategy, reporting each decision to park with the number of
    /// events its reader had read by then.
    struct ReportsParking {
        inner: tickbus::SpinYieldPark,
        read: Arc<AtomicUsize>,
        parking: std::sync::mpsc::Sender<usize>,
    }
    impl tickbus::WaitStrategy for ReportsParking {
        fn next_step(&mut self) -> tickbus::WaitStep {
            let step = self.inner.next_step();
            if step == tickbus::WaitStep::Park {
                let _ = self.parking.send(self.read.load(Ordering::SeqCst));
            }
            step
        }
        fn reset(&mut self) {
            self.inner.reset();
        }
    }
    let read = Arc::new(AtomicUsize::new(0));
    let (parking_tx, parking) = std::sync::mpsc::channel();
    let mut wait = ReportsParking {
        inner: tickbus::SpinYieldPark::default(),
        read: Arc::clone(&read),
        parking: parking_tx,
    };
    let reader = thread::spawn(move || {
        let mut sum = 0;
        loop {
            // The default strategy parks within ~10 ms of nothing to read.
            match sub.recv_batch_blocking_with(8, &mut wait, |v| {
                sum += *v;
                read.fetch_add(1, Ordering::SeqCst);
            }) {
                Ok(n) => assert!((1..=8).contains(&n)),
                Err(RecvError::Closed) => return sum,
                Err(error) => panic!("unexpected {error}"),
            }
        }
    });
    let patience = std::time::Duration::from_secs(30);
    for round in 0..5u64 {
        // Each round waits until the reader has read every earlier one and
        // decided to park: the publish must wake it (a lost wake-up leaves it
        // parked and the next report never comes).
        let everything = round as usize * 10;
        let deadline = std::time::Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match parking.recv_timeout(left) {
                Ok(read) if read == everything => break,
                Ok(_) => {} // an earlier round's report
                Err(_) => panic!("round {round}: the reader never went to park after {everything}"),
            }
        }
        if round % 2 == 0 {
            // Odd rounds publish at once, racing the reader's way into the park;
            // even rounds let it get there. Nothing public says a thread is
            // asleep, so that part stays a bounded pause.
            thread::sleep(std::time::Duration::from_millis(30));
        }
        publisher
            .publish_batch(round * 10..round * 10 + 10)
            .unwrap();
    }
    topic.close();
    assert_eq!(reader.join().unwrap(), (0..50).sum::<u64>());
    let rest = publisher.publish_batch([1, 2]).unwrap_err().into_inner();
    assert_eq!(rest.count(), 2, "a closed topic takes nothing");
}

#[test]
fn a_publish_racing_close_is_delivered_or_handed_back() {
    for _ in 0..200 {
        let bus = Bus::builder().build().unwrap();
        let topic = bus.topic_with::<u64>("md:solo", exclusive(1024)).unwrap();
        let mut sub = topic.subscribe_with(BACKPRESSURE).unwrap();
        let mut publisher = topic.publisher().unwrap();
        let writer = thread::spawn(move || {
            let mut accepted = 0;
            // A full ring makes it wait: the close must wake it with a refusal.
            while publisher.publish(accepted).is_ok() {
                accepted += 1;
            }
            accepted
        });
        thread::yield_now();
        topic.close();
        let accepted = writer.join().unwrap();
        let mut received = 0;
        loop {
            match sub.recv_batch(64, |v| assert_eq!(*v, received_plus(&mut received))) {
                Ok(_) => {}
                Err(TryRecvError::Closed) => break,
                Err(error) => panic!("unexpected {error}"),
            }
        }
        assert_eq!(received, accepted, "every accepted publish, nothing else");
    }
}

/// Returns `*n` and counts one more.
fn received_plus(n: &mut u64) -> u64 {
    *n += 1;
    *n - 1
}

#[test]
fn batch_receive_on_a_shared_topic_keeps_lag_counts() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic_with::<u64>("md:shared", small(4)).unwrap();
    let mut sub = topic.subscribe();
    for n in 0..3 {
        topic.publish(n).unwrap();
    }
    let mut seen = Vec::new();
    assert_eq!(sub.recv_batch(2, |v| seen.push(*v)), Ok(2));
    for n in 3..10 {
        topic.publish(n).unwrap();
    }
    // 2 is still there? No: the ring of 4 holds 6..10; 2..6 were overwritten.
    assert_eq!(
        sub.recv_batch(8, |v| seen.push(*v)),
        Err(TryRecvError::Lagged(4))
    );
    assert_eq!(sub.recv_batch(8, |v| seen.push(*v)), Ok(4));
    assert_eq!(seen, [0, 1, 6, 7, 8, 9]);
    assert_eq!(sub.recv_batch(0, |_| unreachable!()), Ok(0));
}

#[tokio::test]
async fn async_batch_receive_waits_for_the_first_event() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic_with::<u64>("md:solo", exclusive(16)).unwrap();
    let mut sub = topic.subscribe();
    let mut publisher = topic.publisher().unwrap();
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < 6 {
            sub.recv_batch_async(4, |v| seen.push(*v)).await.unwrap();
        }
        seen
    });
    tokio::task::yield_now().await;
    publisher.publish_batch(0..3).unwrap();
    publisher.publish_batch(3..6).unwrap();
    assert_eq!(reader.await.unwrap(), [0, 1, 2, 3, 4, 5]);
}
