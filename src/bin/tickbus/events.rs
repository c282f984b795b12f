//! Events: follow (`tail`), replay and publish, with their output and the
//! replay's progress bar.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use tickbus::admin::Admin;
use tickbus::recording::ReplayedEvent;
use tickbus::replay::{OnTrimmed, ReplayOptions, StopAt};
use tickbus::{DurableOptions, ErrorKind, RedisConfig, StreamId};

use crate::parse::Spot;
use tickbus::payload_json;

use crate::{existing_topics, fail, headers_json, live_bus, output_result};
use crate::{Failure, Outcome, PublishArgs, ReplayArgs, TailArgs};

/// Output of events, in the human or JSON-lines form.
struct Printer {
    out: std::io::BufWriter<std::io::Stdout>,
    json: bool,
    /// Flush after every line (following live events).
    flush_each: bool,
    unreadable: u64,
}

impl Printer {
    fn new(json: bool, flush_each: bool) -> Self {
        Printer {
            out: std::io::BufWriter::new(std::io::stdout()),
            json,
            flush_each,
            unreadable: 0,
        }
    }

    /// Prints one replay item; an item that cannot be shown is reported on
    /// stderr and counted.
    fn item(&mut self, item: tickbus::Result<ReplayedEvent>) -> std::io::Result<()> {
        let event = match item {
            Ok(event) => event,
            Err(error) => {
                self.unreadable += 1;
                eprintln!("tickbus: skipped an entry: {}", error.message());
                return Ok(());
            }
        };
        let payload = match payload_json(event.payload()) {
            Ok(payload) => payload,
            Err(error) => {
                self.unreadable += 1;
                eprintln!(
                    "tickbus: skipped entry {} of {}: the payload cannot be shown as JSON: {}",
                    event.stream_id,
                    event.topic,
                    error.message()
                );
                return Ok(());
            }
        };
        if self.json {
            let mut line = json!({
                "topic": event.topic.as_str(),
                "stream_id": event.stream_id.to_string(),
                "event_id": event.event_id.to_string(),
                "source": event.source.to_string(),
                "timestamp_ns": event.timestamp_ns,
                "payload": payload,
            });
            if !event.headers().is_empty() {
                line["headers"] = headers_json(event.headers());
            }
            writeln!(self.out, "{line}")?;
        } else {
            writeln!(
                self.out,
                "{} {} {} {}",
                event.stream_id, event.topic, event.event_id, payload
            )?;
        }
        if self.flush_each {
            self.out.flush()?;
        }
        Ok(())
    }
}
pub(crate) fn tail(config: RedisConfig, args: TailArgs) -> Outcome {
    let admin = Admin::connect(config.clone())?;
    let topics = existing_topics(
        &admin,
        &config.key_prefix,
        std::slice::from_ref(&args.pattern),
    )?;
    // From the end: the replay's range is then each stream's newest entry,
    // which came before this command; skip those (by stream id per topic).
    let mut seen: HashMap<String, StreamId> = HashMap::new();
    if args.from == Spot::End {
        for topic in &topics {
            match admin.stream_stats(topic) {
                Ok(stats) => {
                    if let Some(last) = stats.last_id {
                        seen.insert(topic.clone(), last);
                    }
                }
                Err(error) if error.kind() == ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    drop(admin);
    let bus = live_bus(config)?;
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let replay = bus.replay(
        &topic_refs,
        ReplayOptions {
            from: args.from.start(),
            to: StopAt::Live,
            on_trimmed: OnTrimmed::Report,
            ..Default::default()
        },
    )?;
    for gap in replay.gaps() {
        eprintln!(
            "tickbus: {}: entries before {} were trimmed",
            gap.topic,
            gap.first_retained
                .map_or_else(|| "now".to_string(), |id| id.to_string())
        );
    }
    eprintln!("tickbus: following {} (Ctrl-C to stop)", topics.join(", "));
    let mut printer = Printer::new(args.json, true);
    for item in replay {
        if let Ok(event) = &item {
            if seen
                .get(event.topic.as_str())
                .is_some_and(|last| event.stream_id <= *last)
            {
                continue;
            }
        }
        if let Err(error) = &item {
            if error.kind() != ErrorKind::Malformed {
                return Err(Failure::from(error.clone()));
            }
        }
        output_result(printer.item(item))?;
    }
    Err(fail("the live replay stopped"))
}

pub(crate) fn replay(config: RedisConfig, args: ReplayArgs) -> Outcome {
    let admin = Admin::connect(config.clone())?;
    let topics = existing_topics(&admin, &config.key_prefix, &args.topics)?;
    let progress =
        if !args.no_progress && std::io::stderr().is_terminal() && !std::io::stdout().is_terminal()
        {
            Progress::plan(&admin, &topics, args.from, args.to)?
        } else {
            None
        };
    drop(admin);
    let bus = live_bus(config)?;
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let replay = bus.replay(
        &topic_refs,
        ReplayOptions {
            from: args.from.start(),
            to: args.to.stop(),
            on_trimmed: OnTrimmed::Report,
            ..Default::default()
        },
    )?;
    for gap in replay.gaps() {
        eprintln!(
            "tickbus: {}: the range starts at {} but the stream's oldest entry is {}; \
             what came before was trimmed",
            gap.topic,
            gap.requested,
            gap.first_retained
                .map_or_else(|| "none".to_string(), |id| id.to_string())
        );
    }
    let mut printer = Printer::new(args.json, false);
    let mut count = 0_u64;
    for item in replay {
        if let Err(error) = &item {
            if error.kind() != ErrorKind::Malformed {
                return Err(Failure::from(error.clone()));
            }
        }
        let at = item.as_ref().ok().map(|event| event.stream_id);
        output_result(printer.item(item))?;
        count += 1;
        if let (Some(progress), Some(at)) = (&progress, at) {
            progress.show(count, at);
        }
    }
    if let Some(progress) = &progress {
        progress.finish(count);
    }
    output_result(printer.out.flush())?;
    if printer.unreadable > 0 {
        return Err(Failure {
            message: format!(
                "{} of {count} entries could not be shown (see above)",
                printer.unreadable
            ),
            code: 3,
        });
    }
    Ok(())
}

/// A progress bar on stderr for long replays (indicatif: redrawn at most 20
/// times a second, hidden when stderr is not a terminal).
struct Progress {
    bar: ProgressBar,
    /// The whole of each stream: done is the count over the streams' lengths;
    /// otherwise the position in the range by stream-id time.
    by_count: bool,
    from_ms: u64,
    total: u64,
}

impl Progress {
    /// A bar when the streams hold more than 10 000 entries together.
    fn plan(
        admin: &Admin,
        topics: &[String],
        from: Spot,
        to: Spot,
    ) -> Result<Option<Progress>, Failure> {
        let mut total = 0;
        let mut first = u64::MAX;
        let mut last = 0;
        for topic in topics {
            let stats = admin.stream_stats(topic)?;
            total += stats.length;
            if let Some(id) = stats.first_id {
                first = first.min(id.ms);
            }
            if let Some(id) = stats.last_id {
                last = last.max(id.ms);
            }
        }
        if total <= 10_000 || first > last {
            return Ok(None);
        }
        let by_count = from.ms().is_none() && to.ms().is_none();
        let from_ms = from.ms().unwrap_or(first).max(first);
        let to_ms = to.ms().unwrap_or(last).min(last).max(from_ms + 1);
        let length = if by_count { total } else { to_ms - from_ms };
        let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("[{bar:30}] {percent:>3}%  {msg}")
                .expect("a valid template")
                .progress_chars("## "),
        );
        Ok(Some(Progress {
            bar,
            by_count,
            from_ms,
            total,
        }))
    }

    fn show(&self, count: u64, at: StreamId) {
        if !count.is_multiple_of(1024) {
            return;
        }
        let done = if self.by_count {
            count
        } else {
            at.ms.saturating_sub(self.from_ms)
        };
        self.bar.set_position(done);
        self.bar
            .set_message(format!("{count} events (streams hold {})", self.total));
    }

    fn finish(&self, count: u64) {
        self.bar.set_position(self.bar.length().unwrap_or(0));
        self.bar.finish_with_message(format!("{count} events"));
    }
}

pub(crate) fn publish(config: RedisConfig, args: PublishArgs) -> Outcome {
    let value: Value = serde_json::from_str(&args.json)
        .map_err(|error| fail(format!("the payload is not valid JSON: {error}")))?;
    let bus = live_bus(config)?;
    let topic = bus.durable_topic::<Value>(
        &args.topic,
        DurableOptions {
            receive_remote: false,
            ..Default::default()
        },
    )?;
    let receipt = topic
        .publish_durable(value)
        .map_err(|error| fail(format!("cannot publish: {error}")))?;
    let stream_id = receipt.wait_timeout(Duration::from_secs(10))?;
    bus.shutdown();
    println!("{stream_id}");
    Ok(())
}
