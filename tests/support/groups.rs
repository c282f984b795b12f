//! Helpers shared by the consumer-group test files (`groups.rs`,
//! `group_conformance.rs`): a live bus on a private server, quick group
//! timing, bounded waits.

#![allow(dead_code)] // Each test file uses its own subset.

use std::time::{Duration, Instant};

use tickbus::group::{Consumer, Delivery, GroupConfig, RetryBackoff};
use tickbus::test_util::RedisServer;
use tickbus::{Bus, DurableOptions, LiveBus, RedisConfig, StartAt};

/// Upper bound on any single wait (a hang fails, never blocks CI).
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn config(server: &RedisServer) -> RedisConfig {
    config_for(&server.url())
}

/// Quick reconnects and short blocks for a server (or a proxy) at `url`.
pub fn config_for(url: &str) -> RedisConfig {
    let mut config = RedisConfig::from_url(url).unwrap();
    config.reconnect_min = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(200);
    config.read_block = Duration::from_millis(200);
    config.command_timeout = Duration::from_secs(2);
    config
}

pub fn live_bus(server: &RedisServer) -> LiveBus {
    init_tracing();
    Bus::builder().redis(config(server)).build().unwrap()
}

/// Quick timing for tests: short blocks and ack waits.
pub fn group_config(name: &str) -> GroupConfig {
    GroupConfig {
        start: StartAt::Beginning,
        consumer: Some(name.to_string()),
        block: Duration::from_millis(100),
        ack_wait: Duration::from_millis(500),
        backoff: RetryBackoff::Exponential {
            first: Duration::from_millis(10),
            max: Duration::from_millis(50),
        },
        ..Default::default()
    }
}

pub async fn next<T: serde::de::DeserializeOwned + Send + 'static>(
    consumer: &mut Consumer<T>,
) -> Delivery<T> {
    match tokio::time::timeout(PATIENCE, consumer.recv()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(other) => panic!("consumer ended: {:?}", other.map(|r| r.map(|_| ()))),
        Err(_) => panic!("no delivery within {PATIENCE:?}: {:?}", consumer.stats()),
    }
}

/// Publishes `range` on `topic` and waits until Redis has them all.
pub fn publish(bus: &LiveBus, topic: &str, range: std::ops::Range<u64>) {
    let topic = bus
        .durable_topic::<u64>(
            topic,
            DurableOptions {
                receive_remote: false,
                ..Default::default()
            },
        )
        .unwrap();
    let mut last = None;
    for i in range {
        last = Some(topic.publish_durable(i).unwrap());
    }
    if let Some(last) = last {
        last.wait_timeout(PATIENCE).unwrap();
    }
}

/// Polls `check` until it holds (up to `PATIENCE`).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The group's pending count (`XPENDING key group`, first line of the reply).
pub fn xpending_count(server: &RedisServer, key: &str, group: &str) -> u64 {
    let reply = server.cli(&["XPENDING", key, group]).unwrap();
    let first = reply.lines().next().unwrap_or_default().trim();
    first
        .parse()
        .unwrap_or_else(|_| panic!("unexpected XPENDING reply: {reply:?}"))
}

pub fn stream_key(topic: &str) -> String {
    format!("tickbus:stream:{{{topic}}}")
}
