//! What a user would pick instead: NATS JetStream (and core NATS), with
//! async-nats against the server at `127.0.0.1:4222`.
//!
//! Each JetStream rig has a stream of its own, named after the process
//! (`TICKBUS_BENCH_<pid>_MEMORY` / `_FILE`, subjects `tickbus.bench.<pid>.<storage>.>`),
//! capped at `STREAM_MAXLEN` messages like the Redis streams, purged after each
//! run and deleted when the rig is dropped. Every run publishes to a subject of
//! its own. Payloads are the same 128 bytes, with no headers (the tickbus entry
//! fields `id`/`src`/`ts` are not added: a `Nats-Msg-Id` header would turn on the
//! server's duplicate tracking, which Redis does not do).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, Context};
use fred::bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::runtime::Handle;

use crate::{
    filler_payload, now_ns, pace, run_on, stamp, unique, Env, LatencyRig, Recorder, ThroughputRig,
    IN_FLIGHT, JETSTREAM_FILE_LATENCY, JETSTREAM_FILE_PUBLISH, JETSTREAM_MEMORY_LATENCY,
    JETSTREAM_MEMORY_PUBLISH, NATS_CORE, STREAM_MAXLEN,
};

/// How long a JetStream API request or publish ack may take.
const NATS_TIMEOUT: Duration = Duration::from_secs(10);

/// The JetStream throughput rigs (memory and file storage), or none.
pub fn throughput_contenders(env: &Env) -> Vec<Box<dyn ThroughputRig>> {
    let Some(client) = &env.nats else {
        return Vec::new();
    };
    let mut rigs: Vec<Box<dyn ThroughputRig>> = Vec::new();
    for (name, storage) in [
        (JETSTREAM_MEMORY_PUBLISH, StorageType::Memory),
        (JETSTREAM_FILE_PUBLISH, StorageType::File),
    ] {
        match JetStreamStream::create(env.handle(), client.clone(), storage, "publish") {
            Ok(stream) => rigs.push(Box::new(JetStreamPublish { name, stream })),
            Err(error) => println!("{name}: skipped, no JetStream stream ({error})"),
        }
    }
    rigs
}

/// Core NATS and the JetStream latency rigs, or none.
pub fn latency_contenders(env: &Env) -> Vec<Box<dyn LatencyRig>> {
    let Some(client) = &env.nats else {
        return Vec::new();
    };
    let mut rigs: Vec<Box<dyn LatencyRig>> = Vec::new();
    match run_on(&env.handle(), connect()) {
        Ok(receiver) => rigs.push(Box::new(CoreNats {
            handle: env.handle(),
            publisher: client.clone(),
            receiver,
        })),
        Err(error) => println!("{NATS_CORE}: skipped, no second connection ({error})"),
    }
    for (name, storage) in [
        (JETSTREAM_MEMORY_LATENCY, StorageType::Memory),
        (JETSTREAM_FILE_LATENCY, StorageType::File),
    ] {
        let rig = JetStreamStream::create(env.handle(), client.clone(), storage, "latency")
            .and_then(|stream| {
                // The receiver is another instance: a connection of its own.
                let client = run_on(&env.handle(), connect())?;
                let _runtime = env.runtime.enter();
                let receiver = jetstream::ContextBuilder::new()
                    .timeout(NATS_TIMEOUT)
                    .build(client);
                Ok(JetStreamLatency {
                    name,
                    stream,
                    receiver,
                })
            });
        match rig {
            Ok(rig) => rigs.push(Box::new(rig)),
            Err(error) => println!("{name}: skipped ({error})"),
        }
    }
    rigs
}

/// A second connection to the NATS server.
async fn connect() -> Result<async_nats::Client, async_nats::Error> {
    Ok(async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(crate::nats_url())
        .await?)
}

/// A stream of this process, deleted on drop.
struct JetStreamStream {
    handle: Handle,
    context: Context,
    name: String,
    subject_prefix: String,
}

impl JetStreamStream {
    fn create(
        handle: Handle,
        client: async_nats::Client,
        storage: StorageType,
        purpose: &str,
    ) -> Result<Self, async_nats::Error> {
        let storage_name = match storage {
            StorageType::Memory => "memory",
            StorageType::File => "file",
        };
        let pid = std::process::id();
        let name = format!(
            "TICKBUS_BENCH_{pid}_{}_{}",
            purpose.to_uppercase(),
            storage_name.to_uppercase()
        );
        let subject_prefix = format!("tickbus.bench.{pid}.{purpose}.{storage_name}");
        // The context spawns its acker task: inside the runtime.
        let context = {
            let _runtime = handle.enter();
            jetstream::ContextBuilder::new()
                .timeout(NATS_TIMEOUT)
                .build(client)
        };
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{subject_prefix}.>")],
            storage,
            max_messages: STREAM_MAXLEN,
            // A safety net for a run that dies before deleting its stream.
            max_age: Duration::from_secs(600),
            ..Default::default()
        };
        let created = context.clone();
        run_on(&handle, async move { created.create_stream(config).await })?;
        Ok(JetStreamStream {
            handle,
            context,
            name,
            subject_prefix,
        })
    }

    /// A fresh subject of this stream.
    fn subject(&self) -> String {
        unique(&self.subject_prefix).replace(':', ".")
    }

    fn purge(&self) {
        let context = self.context.clone();
        let name = self.name.clone();
        run_on(&self.handle, async move {
            let stream = context.get_stream(&name).await.expect("the stream");
            stream.purge().await.expect("purge");
        });
    }
}

impl Drop for JetStreamStream {
    fn drop(&mut self) {
        let context = self.context.clone();
        let name = self.name.clone();
        if let Err(error) = run_on(
            &self.handle,
            async move { context.delete_stream(&name).await },
        ) {
            println!(
                "could not delete the JetStream stream {}: {error}",
                self.name
            );
        }
    }
}

/// JetStream publish with `IN_FLIGHT` (256) acks outstanding.
struct JetStreamPublish {
    name: &'static str,
    stream: JetStreamStream,
}

impl ThroughputRig for JetStreamPublish {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, events: u64) -> Duration {
        let subject = self.stream.subject();
        let context = self.stream.context.clone();
        let payload = Bytes::from(filler_payload());
        let elapsed = run_on(&self.stream.handle, async move {
            let start = Instant::now();
            let mut acks = VecDeque::with_capacity(IN_FLIGHT);
            for _ in 0..events {
                if acks.len() >= IN_FLIGHT {
                    let ack: jetstream::context::PublishAckFuture =
                        acks.pop_front().expect("in flight");
                    ack.await.expect("JetStream ack");
                }
                let ack = context
                    .publish(subject.clone(), payload.clone())
                    .await
                    .expect("JetStream publish");
                acks.push_back(ack);
            }
            for ack in acks {
                ack.await.expect("JetStream ack");
            }
            start.elapsed()
        });
        self.stream.purge();
        elapsed
    }
}

/// JetStream publish (one task per event, awaiting its ack) → an ordered pull
/// consumer on a second connection.
struct JetStreamLatency {
    name: &'static str,
    stream: JetStreamStream,
    receiver: Context,
}

impl LatencyRig for JetStreamLatency {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, events: u64, rate_per_s: u64) -> Histogram<u64> {
        let handle = self.stream.handle.clone();
        let subject = self.stream.subject();
        let (receiver, stream_name, filter) = (
            self.receiver.clone(),
            self.stream.name.clone(),
            subject.clone(),
        );
        let mut messages = run_on(&handle, async move {
            let stream = receiver.get_stream(&stream_name).await?;
            let consumer = stream
                .create_consumer(OrderedConfig {
                    filter_subject: filter,
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await?;
            Ok::<_, async_nats::Error>(consumer.messages().await?)
        })
        .expect("an ordered consumer");
        let mut recorder = Recorder::new(events);
        let deadline = recorder.deadline(rate_per_s);
        let receiving = handle.spawn(async move {
            while !recorder.done() {
                let message = match tokio::time::timeout_at(deadline, messages.next()).await {
                    Ok(Some(message)) => message.expect("a JetStream message"),
                    _ => break,
                };
                recorder.record_payload(&message.payload, now_ns());
            }
            recorder.histogram
        });
        let subject = async_nats::Subject::from(subject);
        let context = self.stream.context.clone();
        pace(events, rate_per_s, |seq| {
            let payload = stamp(seq, now_ns());
            let (context, subject) = (context.clone(), subject.clone());
            handle.spawn(async move {
                let ack = context
                    .publish(subject, payload)
                    .await
                    .expect("JetStream publish");
                ack.await.expect("JetStream ack");
            });
        });
        let histogram = handle.block_on(receiving).expect("receiver panicked");
        self.stream.purge();
        histogram
    }
}

/// Core NATS publish → a subscriber on a second connection (fire-and-forget,
/// like Redis pub/sub).
struct CoreNats {
    handle: Handle,
    publisher: async_nats::Client,
    receiver: async_nats::Client,
}

impl LatencyRig for CoreNats {
    fn name(&self) -> &'static str {
        NATS_CORE
    }

    fn run(&mut self, events: u64, rate_per_s: u64) -> Histogram<u64> {
        let subject = format!("tickbus.bench.{}.core.{}", std::process::id(), {
            unique("n").replace(':', ".")
        });
        let receiver = self.receiver.clone();
        let filter = subject.clone();
        let mut subscriber = run_on(&self.handle, async move {
            let subscriber = receiver.subscribe(filter).await?;
            // The server has the subscription once it answered the PING of flush.
            receiver.flush().await?;
            Ok::<_, async_nats::Error>(subscriber)
        })
        .expect("a NATS subscription");
        let mut recorder = Recorder::new(events);
        let deadline = recorder.deadline(rate_per_s);
        let receiving = self.handle.spawn(async move {
            while !recorder.done() {
                let message = match tokio::time::timeout_at(deadline, subscriber.next()).await {
                    Ok(Some(message)) => message,
                    _ => break,
                };
                recorder.record_payload(&message.payload, now_ns());
            }
            recorder.histogram
        });
        let subject = async_nats::Subject::from(subject);
        pace(events, rate_per_s, |seq| {
            let payload = stamp(seq, now_ns());
            let (client, subject) = (self.publisher.clone(), subject.clone());
            self.handle.spawn(async move {
                client
                    .publish(subject, payload)
                    .await
                    .expect("NATS publish");
            });
        });
        self.handle
            .block_on(receiving)
            .expect("subscriber panicked")
    }
}
