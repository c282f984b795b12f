//! `Bus::health_report` against private `redis-server` processes (never the
//! shared Redis at 6379): group pending and lag, dead letters, the outbox and a
//! lost connection, each judged by `HealthThresholds`.

use std::time::{Duration, Instant};

use tickbus::health::{HealthReport, HealthThresholds};
use tickbus::test_util::RedisServer;
use tickbus::{Bus, ConnectionState, LiveBus, OutboxFull};

mod support;
use support::groups::*;

/// Polls the report until `done` holds; fails with the last report after `PATIENCE`.
async fn report_until(
    bus: &LiveBus,
    limits: HealthThresholds,
    done: impl Fn(&HealthReport) -> bool,
) -> HealthReport {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let report = bus.health_report_with(limits).await;
        if done(&report) {
            return report;
        }
        if Instant::now() > deadline {
            panic!("no such report within {PATIENCE:?}: {report:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_pending_lag_and_dead_letters_are_reported_and_judged() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let healthy = bus.health_report().await;
    assert!(healthy.is_healthy(), "{healthy:#?}");
    assert_eq!(healthy.connection, ConnectionState::Connected);
    assert!(healthy.groups.is_empty());

    publish(&bus, "job:label", 0..10);
    let mut consumer = bus
        .group::<u64>(
            "labelers",
            "job:label",
            tickbus::group::GroupConfig {
                max_in_flight: 3,
                ..group_config("c1")
            },
        )
        .unwrap();
    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    let _held = next(&mut consumer).await; // stays pending
    first.ack();
    second.term("bad label");

    // Ten published; at most three in flight: one acked, one dead-lettered, so
    // five read in all (the held one and two queued behind it are pending),
    // five not read yet; one dead letter.
    let report = report_until(&bus, HealthThresholds::default(), |report| {
        report.groups.first().and_then(|group| group.pending) == Some(3)
            && report.groups[0].lag == Some(5)
            && report.dead_letters.first().and_then(|dead| dead.count) == Some(1)
    })
    .await;
    assert!(
        report.is_healthy(),
        "defaults do not judge these: {report:#?}"
    );
    let group = &report.groups[0];
    assert_eq!(
        (group.group.as_str(), group.consumer.as_str()),
        ("labelers", "c1")
    );
    assert_eq!(group.topics, "job:label");
    assert_eq!(group.in_flight, 3);
    assert_eq!(group.dead_lettered, 1);
    assert_eq!(report.dead_letters[0].topic, "job:label");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["connection"]["state"], "connected");
    assert_eq!(json["groups"][0]["pending"], 3);
    assert_eq!(json["dead_letters"][0]["count"], 1);

    let strict = HealthThresholds {
        max_group_pending: 0,
        max_group_lag: 1,
        max_dead_letters: Some(0),
        ..Default::default()
    };
    let blocking = bus.clone();
    let report = tokio::task::spawn_blocking(move || blocking.health_report_blocking(strict))
        .await
        .unwrap();
    assert!(!report.is_healthy());
    assert!(!json_healthy(&report));
    assert_eq!(report.problems.len(), 3, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("3 entries pending"),
        "{:?}",
        report.problems
    );
    assert!(
        report.problems[1].contains("5 entries not yet read"),
        "{:?}",
        report.problems
    );
    assert!(
        report.problems[2].contains("1 dead letters"),
        "{:?}",
        report.problems
    );
    // Called from async code by mistake: the same report, no panic.
    let inline = bus.health_report_blocking(strict);
    assert_eq!(inline.problems, report.problems);
    assert_eq!(inline.dead_letters[0].count, Some(1));

    // A consumer that stopped leaves the report.
    drop(_held);
    consumer.shutdown();
    let report = bus.health_report().await;
    assert!(report.groups.is_empty(), "{report:#?}");
}

fn json_healthy(report: &HealthReport) -> bool {
    serde_json::to_value(report).unwrap()["healthy"]
        .as_bool()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_and_a_filling_outbox_make_the_bus_unhealthy() {
    let mut server = RedisServer::start().unwrap();
    let mut config = config(&server);
    config.outbox_capacity = 10;
    config.outbox_full = OutboxFull::Error;
    let bus = Bus::builder().redis(config).build().unwrap();
    let topic = bus
        .durable_topic::<u64>("order:new", tickbus::DurableOptions::default())
        .unwrap();
    let _consumer = bus
        .group::<u64>("routers", "order:new", group_config("r1"))
        .unwrap();
    server.kill();
    for i in 0..9 {
        topic.publish(i).unwrap(); // local delivery goes on; the outbox fills
    }
    // Redis away for less than `max_degraded` (30 s): not yet unhealthy for it,
    // but the outbox is 90 % full.
    let report = report_until(&bus, HealthThresholds::default(), |report| {
        matches!(report.connection, ConnectionState::Degraded { .. })
    })
    .await;
    assert_eq!((report.outbox_depth, report.outbox_capacity), (9, 10));
    assert!(
        matches!(
            &report.connection,
            ConnectionState::Degraded { outbox_depth: 9, last_error, .. } if !last_error.is_empty()
        ),
        "{:?}",
        report.connection
    );
    let json = serde_json::to_value(&report).unwrap();
    let connection = json["connection"].as_object().unwrap();
    let mut fields: Vec<&str> = connection.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "for_ms",
            "last_error",
            "outbox_depth",
            "since_unix_ms",
            "state"
        ]
    );
    assert_eq!(connection["state"], "degraded");
    assert_eq!(connection["outbox_depth"], 9);
    assert!(connection["since_unix_ms"].as_u64().unwrap() > 0);
    assert!(connection["for_ms"].is_u64());
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("outbox 9 of 10"),
        "{:?}",
        report.problems
    );
    assert_eq!(report.dead_letters.len(), 1);
    assert_eq!(
        report.dead_letters[0].count, None,
        "Redis is not asked while away"
    );

    let impatient = HealthThresholds {
        max_degraded: Duration::ZERO,
        max_outbox_fill: 1.0,
        ..Default::default()
    };
    let report = report_until(&bus, impatient, |report| !report.is_healthy()).await;
    assert!(
        report.problems[0].starts_with("Redis unavailable"),
        "{:?}",
        report.problems
    );

    server.restart().unwrap();
    // Both connections back (the writer drains the outbox first; the reader may
    // still be waiting for its next reconnect attempt then).
    let report = report_until(&bus, HealthThresholds::default(), |report| {
        report.outbox_depth == 0 && report.connection == ConnectionState::Connected
    })
    .await;
    assert!(report.is_healthy(), "{:?}", report.problems);
    assert_eq!(bus.redis_stats().written, 9);
    assert!(bus.redis_stats().reconnects >= 1, "{:?}", bus.redis_stats());
}

#[tokio::test]
async fn an_embedded_bus_is_healthy_until_shut_down() {
    let bus = Bus::builder().build().unwrap();
    let report = bus.health_report().await;
    assert!(report.is_healthy());
    assert_eq!(report.connection, ConnectionState::Embedded);
    assert_eq!(
        serde_json::to_value(&report).unwrap()["connection"],
        serde_json::json!({"state": "embedded"})
    );
    bus.shutdown();
    let report = bus.health_report().await;
    assert!(!report.is_healthy());
    assert_eq!(report.connection, ConnectionState::Closed);
    assert_eq!(
        serde_json::to_value(&report).unwrap()["connection"],
        serde_json::json!({"state": "closed"})
    );
}
