//! Metrics (feature `metrics`) as a Prometheus scrape shows them: a live bus on a
//! private `redis-server` (never the shared Redis at 6379) publishes, a group
//! consumes, and the scraped text must carry the exact counts.
//!
//! The Prometheus recorder is process-global, and every bus in this test binary
//! records into it: each test uses its own topics and groups, and the bus-wide
//! figures (`tickbus_written_total`, ...) are asserted only in
//! `live_bus_and_group_figures_reach_the_scrape`.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tickbus::test_util::RedisServer;
use tickbus::{Bus, DurableOptions, TopicOptions, TryRecvError};

mod support;
use support::groups::*;

/// The process's Prometheus recorder, installed once.
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
        handle
    })
}

/// The value of the sample `name` whose labels include `labels`, in a scrape.
/// The `bus` label must match exactly: a series of a labelled bus is never
/// taken for the unlabelled one.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, found) = match series.split_once('{') {
            Some((metric, rest)) => {
                let mut found = BTreeMap::new();
                for pair in rest.trim_end_matches('}').split(',') {
                    let (key, value) = pair.split_once('=')?;
                    found.insert(key.to_string(), value.trim_matches('"').to_string());
                }
                (metric, found)
            }
            None => (series, BTreeMap::new()),
        };
        let bus_given = labels.iter().any(|(key, _)| *key == "bus");
        let matches = metric == name
            && (bus_given || !found.contains_key("bus"))
            && labels
                .iter()
                .all(|(key, value)| found.get(*key).map(String::as_str) == Some(*value));
        matches.then(|| value.parse().ok()).flatten()
    })
}

/// Labels a sample must have.
type Labels<'a> = &'a [(&'a str, &'a str)];
/// A sample's name, some of its labels, and its value.
type Expected<'a> = (&'a str, Labels<'a>, f64);

/// Polls the scrape until every `(name, labels, value)` holds (the live bus
/// samples once a second); fails with the scrape after `PATIENCE`.
async fn scrape_until(expected: &[Expected<'_>]) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let scrape = prometheus().render();
        let missing: Vec<_> = expected
            .iter()
            .filter(|(name, labels, value)| sample(&scrape, name, labels) != Some(*value))
            .collect();
        if missing.is_empty() {
            return scrape;
        }
        if Instant::now() > deadline {
            panic!("not in the scrape after {PATIENCE:?}: {missing:?}\n{scrape}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_bus_and_group_figures_reach_the_scrape() {
    const N: u64 = 500;
    prometheus();
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    // A second instance that receives the first one's events.
    let other = live_bus(&server);
    let remote = other
        .durable_topic::<u64>("order:fill", DurableOptions::default())
        .unwrap();
    let mut remote_sub = remote.subscribe();

    let fills = bus
        .durable_topic::<u64>("order:fill", DurableOptions::default())
        .unwrap();
    let mut local_sub = fills.subscribe(); // the reader self-filters the entries
    let mut last = None;
    for i in 0..N {
        last = Some(fills.publish_durable(i).unwrap());
    }
    last.unwrap().wait_timeout(PATIENCE).unwrap();
    for i in 0..N {
        assert_eq!(local_sub.try_recv().unwrap().value, i);
    }
    let deadline = Instant::now() + PATIENCE;
    let mut received = 0;
    while received < N {
        match remote_sub.try_recv() {
            Ok(event) => {
                assert_eq!(event.value, received);
                received += 1;
            }
            Err(TryRecvError::Empty) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(error) => panic!("remote events: {error:?} after {received}"),
        }
    }

    let mut consumer = bus
        .group::<u64>("booking", "order:fill", group_config("c1"))
        .unwrap();
    // Every tenth event is nacked once, then acked on its redelivery.
    let mut acked = std::collections::HashSet::new();
    while acked.len() < N as usize {
        let delivery = next(&mut consumer).await;
        let value = *delivery;
        if value % 10 == 0 && delivery.info().deliveries == 1 {
            delivery.nack(Some(Duration::from_millis(1)));
        } else {
            assert!(acked.insert(value), "{value} acked twice");
            delivery.ack();
        }
    }

    let n = N as f64;
    let group: &[(&str, &str)] = &[
        ("group", "booking"),
        ("consumer", "c1"),
        ("topic", "order:fill"),
    ];
    let group_wide: &[(&str, &str)] = &[("group", "booking"), ("topic", "order:fill")];
    let topic: &[(&str, &str)] = &[("topic", "order:fill")];
    // The live buses sample by themselves, once a second.
    let scrape = scrape_until(&[
        ("tickbus_published_total", topic, n),
        ("tickbus_received_total", topic, n),
        ("tickbus_lagged_total", topic, 0.0),
        ("tickbus_written_total", &[], n),
        ("tickbus_self_filtered_total", &[], n),
        ("tickbus_write_failures_total", &[], 0.0),
        ("tickbus_outbox_depth", &[], 0.0),
        ("tickbus_outbox_capacity", &[], 65_536.0),
        ("tickbus_connected", &[], 1.0),
        ("tickbus_write_batch_size_sum", &[], n),
        ("tickbus_group_delivered_total", group, n + n / 10.0),
        ("tickbus_group_acked_total", group, n),
        ("tickbus_group_nacked_total", group, n / 10.0),
        ("tickbus_group_redelivered_total", group, n / 10.0),
        ("tickbus_group_dead_lettered_total", group, 0.0),
        ("tickbus_group_in_flight", group, 0.0),
        ("tickbus_group_pending", group_wide, 0.0),
        ("tickbus_group_lag", group_wide, 0.0),
    ])
    .await;
    // Histograms: one sample per write pipeline, latencies above zero.
    let batches = sample(&scrape, "tickbus_write_batches_total", &[]).unwrap();
    assert!((1.0..=n).contains(&batches), "{batches} write batches");
    assert_eq!(
        sample(&scrape, "tickbus_write_batch_size_count", &[]),
        Some(batches)
    );
    let latency_sum = sample(&scrape, "tickbus_durable_latency_seconds_sum", &[]).unwrap();
    assert!(latency_sum > 0.0 && latency_sum < 60.0, "{latency_sum}");
    assert!(
        scrape.contains("# HELP tickbus_group_acked_total"),
        "{scrape}"
    );
    consumer.shutdown();
}

#[test]
fn an_embedded_bus_records_published_and_lagged_on_demand() {
    prometheus();
    let bus = Bus::builder().build().unwrap();
    let ticks = bus
        .topic_with::<u64>(
            "md:lagtest",
            TopicOptions {
                capacity: 4,
                ..Default::default()
            },
        )
        .unwrap();
    let mut slow = ticks.subscribe();
    let mut also_slow = ticks.subscribe();
    for n in 0..10 {
        ticks.publish(n).unwrap();
    }
    assert_eq!(slow.try_recv(), Err(TryRecvError::Lagged(6)));
    assert_eq!(also_slow.try_recv(), Err(TryRecvError::Lagged(6)));
    // Nothing is sampled on an embedded bus until it is asked to.
    let labels: &[(&str, &str)] = &[("topic", "md:lagtest")];
    assert_eq!(
        sample(&prometheus().render(), "tickbus_published_total", labels),
        None
    );
    bus.record_metrics();
    let scrape = prometheus().render();
    assert_eq!(
        sample(&scrape, "tickbus_published_total", labels),
        Some(10.0)
    );
    assert_eq!(sample(&scrape, "tickbus_lagged_total", labels), Some(12.0));
    assert_eq!(sample(&scrape, "tickbus_received_total", labels), None);
}

#[test]
fn a_bus_with_a_metrics_label_gives_its_own_series() {
    prometheus();
    let unlabelled = Bus::builder().build().unwrap();
    let backtest = Bus::builder().metrics_label("backtest").build().unwrap();
    for (bus, events) in [(&unlabelled, 3), (&backtest, 5)] {
        let topic = bus.topic::<u64>("md:labelled").unwrap();
        for n in 0..events {
            topic.publish(n).unwrap();
        }
        bus.record_metrics();
    }
    let scrape = prometheus().render();
    let series: Vec<&str> = scrape
        .lines()
        .filter(|line| line.starts_with("tickbus_published_total{") && line.contains("md:labelled"))
        .collect();
    assert_eq!(series.len(), 2, "{series:?}");
    assert!(
        series.contains(&r#"tickbus_published_total{topic="md:labelled"} 3"#),
        "{series:?}"
    );
    assert!(
        series.contains(&r#"tickbus_published_total{bus="backtest",topic="md:labelled"} 5"#),
        "{series:?}"
    );
}

#[cfg(feature = "cache")]
#[test]
fn cache_hits_per_layer_and_loads_reach_the_scrape() {
    prometheus();
    let bus = Bus::builder().build().unwrap();
    let cache = bus
        .cache::<String>("metrics_test", tickbus::cache::CacheConfig::default())
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for _ in 0..3 {
            let value = cache
                .get_or_load("k", |_| async { Ok::<_, std::io::Error>("v".to_string()) })
                .await
                .unwrap();
            assert_eq!(value, "v");
        }
        assert_eq!(cache.get("absent").await.unwrap(), None);
    });
    bus.record_metrics();
    let scrape = prometheus().render();
    let ns = ("namespace", "metrics_test");
    assert_eq!(
        sample(
            &scrape,
            "tickbus_cache_hits_total",
            &[ns, ("layer", "memory")]
        ),
        Some(2.0),
        "{scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            "tickbus_cache_hits_total",
            &[ns, ("layer", "redis")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&scrape, "tickbus_cache_loads_total", &[ns]),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, "tickbus_cache_misses_total", &[ns]),
        Some(2.0)
    );
    assert!(sample(&scrape, "tickbus_cache_load_seconds_total", &[ns]).unwrap() > 0.0);
}

/// `tickbus_cache_tracking` is 1 while the bus's cache invalidations are
/// confirmed on its connection, 0 while Redis is away (memory is not served
/// then), and 1 again once tracking is back.
#[cfg(feature = "cache")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_tracking_gauge_follows_the_connection() {
    prometheus();
    let mut server = RedisServer::start().unwrap();
    let bus = Bus::builder()
        .redis(config(&server))
        .metrics_label("tracking-test")
        .build()
        .unwrap();
    let cache = bus
        .cache::<u64>("tracking_test", tickbus::cache::CacheConfig::default())
        .unwrap();
    cache.set("k", 1).await.unwrap();
    let gauge = || {
        bus.record_metrics();
        sample(
            &prometheus().render(),
            "tickbus_cache_tracking",
            &[("bus", "tracking-test")],
        )
    };
    eventually("tracking confirmed", || gauge() == Some(1.0)).await;
    server.kill();
    eventually("tracking lost with the connection", || gauge() == Some(0.0)).await;
    server.restart().unwrap();
    eventually("tracking confirmed again", || gauge() == Some(1.0)).await;
}
