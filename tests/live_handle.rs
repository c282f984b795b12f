//! The live handle's lifecycle against real `redis-server` processes: the async
//! twins of the blocking set-up calls, `close().await` waiting for the outbox,
//! and a drop inside an async runtime that does not block the executor (while
//! the writer still drains what it holds).

use std::time::Duration;

use fred::prelude::{ClientLike, StreamsInterface};
use tickbus::admin::Admin;
use tickbus::group::GroupConfig;
use tickbus::replay::ReplayOptions;
use tickbus::test_util::{FaultProxy, RedisServer};
use tickbus::{Bus, DurableOptions, LiveBus, RedisConfig, StartAt};

/// Upper bound on any single wait in these tests (a hang fails, never blocks CI).
const PATIENCE: Duration = Duration::from_secs(30);

fn config(url: &str) -> RedisConfig {
    let mut config = RedisConfig::from_url(url).unwrap();
    config.reconnect_min = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(200);
    config.read_block = Duration::from_millis(200);
    config.command_timeout = Duration::from_secs(1);
    config
}

async fn xlen(url: &str, key: &str) -> u64 {
    let client = fred::prelude::Builder::from_config(fred::prelude::Config::from_url(url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    let len: u64 = client.xlen(key).await.unwrap();
    client.quit().await.unwrap();
    len
}

#[tokio::test(flavor = "current_thread")]
async fn the_async_twins_set_up_a_live_bus_without_blocking_the_executor() {
    let server = RedisServer::start().unwrap();
    let bus: LiveBus = Bus::builder()
        .redis(config(&server.url()))
        .build_async()
        .await
        .unwrap();
    let jobs = bus
        .durable_topic_async::<u64>("job:price", DurableOptions::default())
        .await
        .unwrap();
    let group = GroupConfig {
        start: StartAt::Beginning,
        ..Default::default()
    };
    let mut workers = bus
        .group_async::<u64>("pricers", "job:price", group)
        .await
        .unwrap();
    for n in 0..10 {
        jobs.publish(n).unwrap();
    }
    let last = jobs.publish_durable(10).unwrap().await.unwrap();
    let mut handled = Vec::new();
    while handled.len() < 11 {
        let delivery = tokio::time::timeout(PATIENCE, workers.recv())
            .await
            .expect("a delivery in time")
            .expect("the consumer is open")
            .unwrap();
        handled.push(*delivery);
        delivery.ack();
    }
    assert_eq!(handled, (0..=10).collect::<Vec<u64>>());
    workers.close().await;

    let options = ReplayOptions {
        to: tickbus::replay::StopAt::Id(last),
        ..Default::default()
    };
    let mut replay = bus.replay_async(&["job:price"], options).await.unwrap();
    let mut replayed = Vec::new();
    while let Some(event) = tokio::time::timeout(PATIENCE, replay.recv())
        .await
        .expect("the replay in time")
    {
        replayed.push(event.unwrap().decode::<u64>().unwrap());
    }
    assert_eq!(replayed, (0..=10).collect::<Vec<u64>>());

    let admin = Admin::connect_async(config(&server.url())).await.unwrap();
    assert_eq!(admin.server_version(), bus.redis_version());
    bus.close().await;
    assert!(bus.is_shut_down());
}

#[tokio::test]
async fn close_resolves_once_the_outbox_is_written() {
    let server = RedisServer::start().unwrap();
    let bus = Bus::builder()
        .redis(config(&server.url()))
        .build_async()
        .await
        .unwrap();
    let fills = bus
        .durable_topic_async::<u64>("execution:fill", DurableOptions::default())
        .await
        .unwrap();
    for n in 0..5_000 {
        fills.publish(n).unwrap();
    }
    bus.close().await;
    assert_eq!(
        xlen(&server.url(), "tickbus:stream:{execution:fill}").await,
        5_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_inside_a_runtime_does_not_wait_and_the_writer_still_drains() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let mut config = config(&proxy.url());
    // Long enough that a drop which waited for the outbox would outlast PATIENCE.
    config.shutdown_timeout = Duration::from_secs(120);
    let bus = Bus::builder().redis(config).build_async().await.unwrap();
    let fills = bus
        .durable_topic_async::<u64>("execution:fill", DurableOptions::default())
        .await
        .unwrap();
    proxy.stall();
    for n in 0..100 {
        fills.publish(n).unwrap();
    }
    // The last handles go on a runtime thread, with Redis unreachable and 100
    // events in the outbox: the drop must return without waiting for them.
    let dropped = tokio::spawn(async move {
        drop(fills);
        drop(bus);
    });
    tokio::time::timeout(PATIENCE, dropped)
        .await
        .expect("a drop inside the runtime returned without waiting for the outbox")
        .unwrap();
    // Nothing was lost: the writer, on its own thread, writes them once Redis is back.
    proxy.heal();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let len = xlen(&server.url(), "tickbus:stream:{execution:fill}").await;
        if len == 100 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer wrote {len} of 100 after the drop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
