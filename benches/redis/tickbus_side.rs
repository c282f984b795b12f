//! The tickbus contenders: a durable topic on a live bus, publishing (throughput)
//! and delivering to a second bus (latency), against the same private Redis as
//! the anchors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteArray;
use tickbus::{Bus, DurableOptions, LiveBus, RecvError, RedisConfig, Retention};

use crate::{
    now_ns, pace, read_stamp, stamp, Env, LatencyRig, Recorder, ThroughputRig, PAYLOAD_BYTES,
    RECEIVE_GRACE,
};

/// The benchmark's event: 128 bytes, sent as a MessagePack `bin` (no heap
/// allocation for the value itself).
#[derive(Clone, Copy, Serialize, Deserialize)]
struct Payload(ByteArray<PAYLOAD_BYTES>);

impl Payload {
    fn new(bytes: &[u8]) -> Self {
        let mut array = [0_u8; PAYLOAD_BYTES];
        array.copy_from_slice(&bytes[..PAYLOAD_BYTES]);
        Payload(ByteArray::new(array))
    }
}

/// Topic names unique per run, so that every run starts on an empty stream.
fn unique_topic(kind: &str) -> String {
    static RUN: AtomicU64 = AtomicU64::new(0);
    format!("bench:{kind}-{}", RUN.fetch_add(1, Ordering::Relaxed))
}

fn live_bus(env: &Env) -> LiveBus {
    let config = RedisConfig::from_url(&env.url).expect("the private Redis URL");
    Bus::builder().redis(config).build().expect("a live bus")
}

fn options(receive_remote: bool) -> DurableOptions {
    DurableOptions {
        retention: Retention {
            max_len: Some(1_000_000),
            max_age: None,
        },
        receive_remote,
        ..Default::default()
    }
}

/// `Topic::publish` in a loop on one thread, then `publish_durable` for the last
/// event, whose receipt resolves once Redis has everything (entries are written
/// in order).
pub struct TickbusPublish {
    bus: LiveBus,
}

impl TickbusPublish {
    pub const NAME: &'static str = "tickbus_durable_publish";

    pub fn new(env: &Env) -> Self {
        TickbusPublish { bus: live_bus(env) }
    }
}

impl ThroughputRig for TickbusPublish {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, events: u64) -> Duration {
        let name = unique_topic("publish");
        let topic = self
            .bus
            .durable_topic::<Payload>(&name, options(false))
            .expect("a durable topic");
        let payload = Payload::new(&stamp(0, 0));
        let start = Instant::now();
        for _ in 1..events {
            topic.publish(payload).expect("publish");
        }
        topic
            .publish_durable(payload)
            .expect("publish")
            .wait()
            .expect("the last receipt");
        let elapsed = start.elapsed();
        self.bus.purge_stream(&name).expect("purge");
        elapsed
    }
}

/// Bus A publishes (paced), bus B (another instance, its own connections)
/// receives on a thread of its own with `recv_blocking` (spin, yield, park).
pub struct TickbusLatency {
    publisher: LiveBus,
    receiver: LiveBus,
}

impl TickbusLatency {
    pub const NAME: &'static str = "tickbus_cross_instance";

    pub fn new(env: &Env) -> Self {
        TickbusLatency {
            publisher: live_bus(env),
            receiver: live_bus(env),
        }
    }
}

impl LatencyRig for TickbusLatency {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, events: u64, rate_per_s: u64) -> Histogram<u64> {
        let name = unique_topic("latency");
        let topic = self
            .publisher
            .durable_topic::<Payload>(&name, options(false))
            .expect("a durable topic");
        let remote = self
            .receiver
            .durable_topic::<Payload>(&name, options(true))
            .expect("a durable topic");
        let mut sub = remote.subscribe();
        let mut recorder = Recorder::new(events);
        // The default wait of a blocking receive: a short spin, yields, then park.
        let receiving = thread::spawn(move || {
            while !recorder.done() {
                match sub.recv_blocking() {
                    Ok(event) => {
                        let now = now_ns();
                        if let Some((seq, sent)) = read_stamp(&event.value.0[..]) {
                            recorder.record(seq, sent, now);
                        }
                    }
                    Err(RecvError::Closed) => break,
                    Err(error) => panic!("{error}"),
                }
            }
            recorder.histogram
        });
        pace(events, rate_per_s, |seq| {
            topic
                .publish(Payload::new(&stamp(seq, now_ns())))
                .expect("publish");
        });
        // Whatever has not arrived within the grace period counts as missing.
        let give_up = Instant::now() + RECEIVE_GRACE;
        while !receiving.is_finished() && Instant::now() < give_up {
            thread::sleep(Duration::from_millis(1));
        }
        remote.close();
        let histogram = receiving.join().expect("the receiver panicked");
        let _ = self.publisher.purge_stream(&name);
        histogram
    }
}
