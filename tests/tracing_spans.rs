//! The `tracing` spans and events tickbus emits (feature `tracing`), captured
//! by a layer of the process's global subscriber: a local publish, a durable
//! publish, its write batch and a group delivery, each with its fields. Against
//! a private `redis-server` (never the shared Redis at 6379).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tickbus::group::GroupConfig;
use tickbus::test_util::RedisServer;
use tickbus::{Bus, DurableOptions, RedisConfig, StartAt};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// A span or event seen: its name and its fields as text.
#[derive(Clone, Debug)]
struct Seen {
    name: String,
    fields: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Seen>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Seen {
            name: attrs.metadata().name().to_string(),
            fields,
        });
    }

    fn on_record(
        &self,
        _: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: Context<'_, S>,
    ) {
        // Fields recorded later (the durable publish's seq and event id) go to
        // the last span seen with that name: enough for one publisher thread.
        let mut fields = BTreeMap::new();
        values.record(&mut Fields(&mut fields));
        if let Some(last) = self
            .0
            .lock()
            .unwrap()
            .iter_mut()
            .rev()
            .find(|seen| seen.name == "tickbus.publish" && seen.fields.contains_key("durable"))
        {
            last.fields.extend(fields);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let name = fields.get("message").cloned().unwrap_or_default();
        self.0.lock().unwrap().push(Seen { name, fields });
    }
}

impl Capture {
    fn named(&self, name: &str) -> Vec<Seen> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|seen| seen.name == name)
            .cloned()
            .collect()
    }
}

#[test]
fn publish_write_batch_and_delivery_carry_their_fields() {
    let capture = Capture::default();
    let filter =
        tracing_subscriber::filter::Targets::new().with_target("tickbus", tracing::Level::TRACE);
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(capture.clone().with_filter(filter)),
    )
    .unwrap();

    // A local publish: a TRACE event with the topic, seq and event id.
    let embedded = Bus::builder().build().unwrap();
    let ticks = embedded.topic::<u64>("md:tick").unwrap();
    let mut sub = ticks.subscribe();
    ticks.publish(7).unwrap();
    let event = sub.try_recv().unwrap();
    let local = capture.named("tickbus.publish");
    assert_eq!(local.len(), 1, "{local:?}");
    assert_eq!(local[0].fields["topic"], "md:tick");
    assert_eq!(local[0].fields["seq"], "0");
    assert_eq!(local[0].fields["event_id"], event.meta.id().to_string());

    // A durable publish: a span, then its write batch on the writer thread.
    let server = RedisServer::start().unwrap();
    let bus = Bus::builder()
        .redis(RedisConfig::from_url(&server.url()).unwrap())
        .build()
        .unwrap();
    let jobs = bus
        .durable_topic::<u64>("job:label", DurableOptions::default())
        .unwrap();
    let mut local_jobs = jobs.subscribe();
    jobs.publish_durable(42)
        .unwrap()
        .wait_timeout(Duration::from_secs(30))
        .unwrap();
    let published = local_jobs.try_recv().unwrap();
    let durable: Vec<_> = capture
        .named("tickbus.publish")
        .into_iter()
        .filter(|seen| seen.fields.contains_key("durable"))
        .collect();
    assert_eq!(durable.len(), 1, "{durable:?}");
    assert_eq!(durable[0].fields["topic"], "job:label");
    assert_eq!(
        durable[0].fields["event_id"],
        published.meta.id().to_string()
    );
    let batches = capture.named("tickbus.write_batch");
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(batches[0].fields["batch_size"], "1");
    assert_eq!(batches[0].fields["fsync"], "false");

    // A group delivery: a span with the event id and the delivery count.
    let config = GroupConfig {
        start: StartAt::Beginning,
        ack_wait: Duration::from_millis(300),
        ..Default::default()
    };
    let mut consumer = bus.group::<u64>("labelers", "job:label", config).unwrap();
    let first = consumer.recv_blocking().unwrap().unwrap();
    assert!(!first.span().is_disabled());
    first.nack(Some(Duration::from_millis(1)));
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let delivery = consumer.recv_blocking().unwrap().unwrap();
        if delivery.info().deliveries == 2 || Instant::now() > deadline {
            break delivery;
        }
    };
    second.ack();
    let deliveries = capture.named("tickbus.delivery");
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    for (seen, count) in deliveries.iter().zip(["1", "2"]) {
        assert_eq!(seen.fields["event_id"], published.meta.id().to_string());
        assert_eq!(seen.fields["deliveries"], count);
        assert_eq!(seen.fields["group"], "labelers");
        assert_eq!(seen.fields["topic"], "job:label");
    }
    consumer.shutdown();
}
