//! `tickbus`: look at and operate a tickbus deployment's Redis from a shell.
//!
//! Follow and replay topics with payloads shown as JSON, publish an event,
//! look at consumer groups, pending entries, dead letters and stream sizes.
//! Built with the `cli` feature; see `docs/cli.md`.
//!
//! Exit status: 0 on success; 1 on an error (unreachable server, refused
//! credentials, a missing stream or group, bad input); 2 for a usage error;
//! 3 when `replay` finished but some entries could not be shown (not tickbus
//! entries, or payloads that are not MessagePack: each one is reported on
//! stderr).

#[path = "tickbus/parse.rs"]
mod parse;

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use tickbus::admin::{Admin, GroupSummary};
use tickbus::{
    Bus, DeadLetter, DurableOptions, Error, ErrorKind, OnTrimmed, Position, RedisConfig, Redrive,
    ReplayOptions, ReplayedEvent, StreamId,
};

use crate::parse::{human_bytes, human_duration, Spot};
use tickbus::payload_json;

/// Look at and operate tickbus streams, consumer groups and dead letters in Redis.
#[derive(Debug, Parser)]
#[command(name = "tickbus", version, propagate_version = true)]
struct Cli {
    /// Redis URL: redis://[user[:password]@]host[:port][/db], or rediss:// for
    /// TLS. Default: $TICKBUS_REDIS_URL, else $REDIS_URL.
    #[arg(long, global = true, value_name = "URL")]
    redis: Option<String>,
    /// Key prefix of the deployment (RedisConfig::key_prefix).
    #[arg(long, global = true, value_name = "PREFIX", default_value = "tickbus")]
    prefix: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Follow events as they are written (payloads shown as JSON), until
    /// interrupted.
    Tail(TailArgs),
    /// Print a range of one or more topics' events, merged in stream-id order.
    Replay(ReplayArgs),
    /// Encode a JSON value as MessagePack and append it to a topic as a tickbus
    /// event; prints its stream id.
    Publish(PublishArgs),
    /// Consumer groups per stream: members, pending entries, lag, last
    /// delivered id.
    Groups(GroupsArgs),
    /// The pending (delivered, unacknowledged) entries of a group on a topic.
    Pending(PendingArgs),
    /// Dead letters: list them, or put them back into their topic.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Per stream: length, first and last id, memory, groups' lag; cache keys
    /// per namespace.
    Stats(StatsArgs),
}

#[derive(Debug, Args)]
struct TailArgs {
    /// A topic (`md:tick`) or a pattern (`md:*`, `trading:>`), matched against
    /// the streams present when it starts.
    pattern: String,
    /// Where to start: `end` (only new events, the default), `beginning`, a
    /// stream id (1700000000000-0), unix ms or an RFC 3339 time.
    #[arg(long, value_name = "POSITION", default_value = "end", value_parser = parse::spot)]
    from: Spot,
    /// One JSON object per line (topic, stream_id, event_id, source,
    /// timestamp_ns, payload).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// Topics or patterns (`md:*`, `trading:>`).
    #[arg(required = true, value_name = "TOPIC|PATTERN")]
    topics: Vec<String>,
    /// First entry: `beginning` (the default), `end`, a stream id, unix ms or
    /// an RFC 3339 time (inclusive).
    #[arg(long, value_name = "POSITION", default_value = "beginning", value_parser = parse::spot)]
    from: Spot,
    /// Last entry: `end` (the newest when it starts, the default), a stream id,
    /// unix ms or an RFC 3339 time (inclusive).
    #[arg(long, value_name = "POSITION", default_value = "end", value_parser = parse::spot)]
    to: Spot,
    /// One JSON object per line (topic, stream_id, event_id, source,
    /// timestamp_ns, payload).
    #[arg(long)]
    json: bool,
    /// Never show the progress bar (shown on stderr for ranges of more than
    /// 10 000 entries when stderr is a terminal and stdout is not).
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, Args)]
struct PublishArgs {
    /// The topic (`component:event`).
    topic: String,
    /// The payload, as JSON (`'{"symbol":"ETH-PERP","qty":-5.12}'`).
    json: String,
}

#[derive(Debug, Args)]
struct GroupsArgs {
    /// Only streams of this topic or pattern.
    pattern: Option<String>,
    /// One JSON object per stream.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PendingArgs {
    /// The consumer group.
    group: String,
    /// The topic.
    topic: String,
    /// How many of the oldest pending entries to list.
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters (reason, deliveries, group, error, original id,
    /// payload), oldest first.
    List(DlqListArgs),
    /// Put dead letters back into their topic's stream (same event id and
    /// payload, a new stream id); every group reading the topic gets them again.
    Requeue(DlqRequeueArgs),
}

#[derive(Debug, Args)]
struct DlqListArgs {
    /// Only this topic (or pattern); default every topic with dead letters.
    topic: Option<String>,
    /// Most dead letters listed per topic.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
struct DlqRequeueArgs {
    /// The topic.
    topic: String,
    /// The dead letter's id in the dead-letter stream (as `dlq list` shows).
    #[arg(long, value_name = "ID", value_parser = parse_stream_id)]
    id: Option<StreamId>,
    /// Every dead letter of the topic.
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// One JSON document.
    #[arg(long)]
    json: bool,
}

fn parse_stream_id(text: &str) -> Result<StreamId, String> {
    match parse::spot(text) {
        Ok(Spot::Id(id)) => Ok(id),
        _ => Err(format!(
            "not a stream id (`<ms>-<seq>`, e.g. 1700000000000-0): {text:?}"
        )),
    }
}

/// A failure: what to print, and the exit status.
struct Failure {
    message: String,
    code: u8,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let hint = match error.kind() {
            ErrorKind::Auth => " (check the password or user in the Redis URL)",
            ErrorKind::Unavailable if error.message().contains("connect") => {
                " (is the server running, and the URL right?)"
            }
            _ => "",
        };
        Failure {
            message: format!("{error}{hint}"),
            code: 1,
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure {
            message: format!("cannot write the output: {error}"),
            code: 1,
        }
    }
}

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: 1,
    }
}

type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) if failure.message.is_empty() => ExitCode::from(failure.code),
        Err(failure) => {
            eprintln!("tickbus: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn run(cli: Cli) -> Outcome {
    let mut config = match &cli.redis {
        Some(url) => RedisConfig::from_url(url)?,
        None => RedisConfig::from_env()?.ok_or_else(|| {
            fail("no Redis URL: pass --redis URL or set TICKBUS_REDIS_URL or REDIS_URL")
        })?,
    };
    config.key_prefix = cli.prefix.clone();
    config.connect_timeout = Duration::from_secs(3);
    config.validate()?;
    match cli.command {
        Command::Tail(args) => tail(config, args),
        Command::Replay(args) => replay(config, args),
        Command::Publish(args) => publish(config, args),
        Command::Groups(args) => groups(config, args),
        Command::Pending(args) => pending(config, args),
        Command::Dlq(DlqCommand::List(args)) => dlq_list(config, args),
        Command::Dlq(DlqCommand::Requeue(args)) => dlq_requeue(config, args),
        Command::Stats(args) => stats(config, args),
    }
}

fn live_bus(config: RedisConfig) -> Result<Bus, Failure> {
    Ok(Bus::builder().redis(config).build()?)
}

/// The topics `items` name (topics or patterns) that have a stream; a topic
/// without one, or a pattern matching none, is an error.
fn existing_topics(admin: &Admin, prefix: &str, items: &[String]) -> Result<Vec<String>, Failure> {
    let mut found = Vec::new();
    for item in items {
        let topics = admin.topics(Some(item))?;
        if topics.is_empty() {
            return Err(fail(if item.contains(['*', '>']) {
                format!(
                    "{}: no stream matches the pattern {item}",
                    ErrorKind::NotFound
                )
            } else {
                format!(
                    "{}: topic {item} has no stream (no key {prefix}:stream:{{{item}}})",
                    ErrorKind::NotFound
                )
            }));
        }
        found.extend(topics.into_iter().map(|t| t.to_string()));
    }
    found.sort();
    found.dedup();
    Ok(found)
}

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

/// A closed pipe (`tickbus replay … | head`) ends the command quietly.
fn output_result(result: std::io::Result<()>) -> Outcome {
    match result {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure {
            message: String::new(),
            code: 0,
        }),
        other => Ok(other?),
    }
}

fn tail(config: RedisConfig, args: TailArgs) -> Outcome {
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
            from: args.from.position(),
            to: Position::Live,
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

fn replay(config: RedisConfig, args: ReplayArgs) -> Outcome {
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
            from: args.from.position(),
            to: args.to.position(),
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
        if count % 1024 != 0 {
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

fn publish(config: RedisConfig, args: PublishArgs) -> Outcome {
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

fn group_json(group: &GroupSummary) -> Value {
    json!({
        "name": group.name,
        "pending": group.pending,
        "lag": group.lag,
        "last_delivered": group.last_delivered.to_string(),
        "consumers": group.consumers.iter().map(|c| json!({
            "name": c.name,
            "pending": c.pending,
            "idle_ms": u64::try_from(c.idle.as_millis()).unwrap_or(u64::MAX),
        })).collect::<Vec<_>>(),
    })
}

fn lag_text(lag: Option<u64>) -> String {
    lag.map_or_else(|| "?".to_string(), |lag| lag.to_string())
}

fn groups(config: RedisConfig, args: GroupsArgs) -> Outcome {
    let admin = Admin::connect(config.clone())?;
    let topics = match &args.pattern {
        Some(pattern) => {
            existing_topics(&admin, &config.key_prefix, std::slice::from_ref(pattern))?
        }
        None => admin.topics(None)?.iter().map(|t| t.to_string()).collect(),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut any = false;
    for topic in &topics {
        let groups = match admin.groups(topic) {
            Ok(groups) => groups,
            Err(error) if error.kind() == ErrorKind::NotFound => continue, // deleted meanwhile
            Err(error) => return Err(error.into()),
        };
        if args.json {
            let line = json!({
                "topic": topic,
                "groups": groups.iter().map(group_json).collect::<Vec<_>>(),
            });
            output_result(writeln!(out, "{line}"))?;
            continue;
        }
        if groups.is_empty() {
            continue;
        }
        any = true;
        output_result(writeln!(out, "{topic}"))?;
        for group in &groups {
            output_result(writeln!(
                out,
                "  group {}  consumers {}  pending {}  lag {}  last-delivered {}",
                group.name,
                group.consumers.len(),
                group.pending,
                lag_text(group.lag),
                group.last_delivered
            ))?;
            for consumer in &group.consumers {
                output_result(writeln!(
                    out,
                    "    consumer {}  pending {}  idle {}",
                    consumer.name,
                    consumer.pending,
                    human_duration(consumer.idle)
                ))?;
            }
        }
    }
    output_result(out.flush())?;
    if !args.json && !any {
        eprintln!("tickbus: no consumer groups");
    }
    Ok(())
}

fn pending(config: RedisConfig, args: PendingArgs) -> Outcome {
    let admin = Admin::connect(config)?;
    let summary = admin.pending(&args.group, &args.topic, args.count)?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    if args.json {
        let document = json!({
            "topic": summary.topic.as_str(),
            "group": summary.group,
            "count": summary.count,
            "first_id": summary.first_id.map(|id| id.to_string()),
            "last_id": summary.last_id.map(|id| id.to_string()),
            "consumers": summary.consumers.iter().map(|(name, count)| json!({"name": name, "pending": count})).collect::<Vec<_>>(),
            "oldest": summary.oldest.iter().map(|entry| json!({
                "id": entry.id.to_string(),
                "consumer": entry.consumer,
                "idle_ms": u64::try_from(entry.idle.as_millis()).unwrap_or(u64::MAX),
                "deliveries": entry.deliveries,
            })).collect::<Vec<_>>(),
        });
        output_result(writeln!(out, "{document}"))?;
        return output_result(out.flush());
    }
    let bounds = match (summary.first_id, summary.last_id) {
        (Some(first), Some(last)) => format!(" ({first} .. {last})"),
        _ => String::new(),
    };
    output_result(writeln!(
        out,
        "group {} on {}: {} pending{bounds}",
        summary.group, summary.topic, summary.count
    ))?;
    if !summary.consumers.is_empty() {
        output_result(writeln!(out, "per consumer:"))?;
        for (name, count) in &summary.consumers {
            output_result(writeln!(out, "  {name}  {count}"))?;
        }
    }
    if !summary.oldest.is_empty() {
        output_result(writeln!(out, "oldest:"))?;
        for entry in &summary.oldest {
            output_result(writeln!(
                out,
                "  {}  consumer {}  idle {}  deliveries {}",
                entry.id,
                entry.consumer,
                human_duration(entry.idle),
                entry.deliveries
            ))?;
        }
    }
    output_result(out.flush())
}

/// Runs a runtime-agnostic future (the bus's admin calls) to completion.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park_timeout(Duration::from_millis(50)),
        }
    }
}

/// Headers as a JSON object of strings (a repeated name: the last one shows).
fn headers_json(headers: &[(String, String)]) -> Value {
    Value::Object(
        headers
            .iter()
            .map(|(name, value)| (name.clone(), Value::String(value.clone())))
            .collect(),
    )
}

fn dead_letter_json(letter: &DeadLetter) -> Value {
    let payload = letter.data.as_deref().map(|data| {
        payload_json(data).unwrap_or_else(|error| json!({"undecodable": error.message()}))
    });
    json!({
        "id": letter.id.to_string(),
        "topic": letter.topic.as_str(),
        "reason": letter.reason,
        "deliveries": letter.deliveries,
        "group": letter.group,
        "consumer": letter.consumer,
        "error": letter.error,
        "stream_id": letter.stream_id.map(|id| id.to_string()),
        "event_id": letter.event_id.map(|id| id.to_string()),
        "source": letter.source.map(|id| id.to_string()),
        "timestamp_ns": letter.timestamp_ns,
        "headers": headers_json(&letter.headers),
        "entry_error": letter.entry_error,
        "dead_at_ms": letter.dead_at.duration_since(std::time::UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0),
        "payload": payload,
    })
}

fn dlq_list(config: RedisConfig, args: DlqListArgs) -> Outcome {
    let admin = Admin::connect(config.clone())?;
    let topics = admin.dead_letter_topics(args.topic.as_deref())?;
    drop(admin);
    if topics.is_empty() {
        eprintln!("tickbus: no dead letters");
        return Ok(());
    }
    let bus = live_bus(config)?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut listed = 0;
    for topic in &topics {
        let letters = block_on(bus.dead_letters(topic.as_str(), args.count))?;
        listed += letters.len();
        for letter in &letters {
            if args.json {
                output_result(writeln!(out, "{}", dead_letter_json(letter)))?;
                continue;
            }
            let payload = letter.data.as_deref().map_or_else(
                || "-".to_string(),
                |data| {
                    payload_json(data).map_or_else(
                        |_| format!("<{} bytes, not MessagePack>", data.len()),
                        |value| value.to_string(),
                    )
                },
            );
            output_result(writeln!(
                out,
                "{} {}  reason {}  deliveries {}  group {}  consumer {}  original {}  error {:?}  payload {payload}",
                letter.id,
                letter.topic,
                letter.reason,
                letter.deliveries,
                letter.group,
                letter.consumer,
                letter.stream_id.map_or_else(|| "-".to_string(), |id| id.to_string()),
                letter.error,
            ))?;
        }
    }
    if listed == 0 {
        eprintln!("tickbus: no dead letters");
    }
    output_result(out.flush())
}

fn dlq_requeue(config: RedisConfig, args: DlqRequeueArgs) -> Outcome {
    let which = match args.id {
        Some(id) => Redrive::Entry(id),
        None => Redrive::All,
    };
    let bus = live_bus(config)?;
    let count = block_on(bus.redrive(&args.topic, which))?;
    bus.shutdown();
    if let (Some(id), 0) = (args.id, count) {
        return Err(fail(format!(
            "{}: no dead letter of topic {} has id {id}",
            ErrorKind::NotFound,
            args.topic
        )));
    }
    println!(
        "requeued {count} dead letter{} of {}",
        if count == 1 { "" } else { "s" },
        args.topic
    );
    Ok(())
}

fn stats(config: RedisConfig, args: StatsArgs) -> Outcome {
    let admin = Admin::connect(config)?;
    let mut streams = Vec::new();
    for topic in admin.topics(None)? {
        match admin.stream_stats(topic.as_str()) {
            Ok(stats) => streams.push(stats),
            Err(error) if error.kind() == ErrorKind::NotFound => {} // deleted meanwhile
            Err(error) => return Err(error.into()),
        }
    }
    let caches = admin.cache_namespaces()?;
    let (major, minor, patch) = admin.server_version();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    if args.json {
        let document = json!({
            "redis_version": format!("{major}.{minor}.{patch}"),
            "streams": streams.iter().map(|s| json!({
                "topic": s.topic.as_str(),
                "key": s.key,
                "length": s.length,
                "first_id": s.first_id.map(|id| id.to_string()),
                "last_id": s.last_id.map(|id| id.to_string()),
                "memory_bytes": s.memory_bytes,
                "groups": s.groups.iter().map(group_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "cache": caches.iter().map(|c| json!({"namespace": c.namespace, "keys": c.keys})).collect::<Vec<_>>(),
        });
        output_result(writeln!(out, "{document}"))?;
        return output_result(out.flush());
    }
    output_result(writeln!(out, "redis {major}.{minor}.{patch}"))?;
    output_result(writeln!(out, "streams: {}", streams.len()))?;
    for s in &streams {
        let id = |id: Option<StreamId>| id.map_or_else(|| "-".to_string(), |id| id.to_string());
        output_result(writeln!(
            out,
            "  {}  length {}  first {}  last {}  memory {}",
            s.topic,
            s.length,
            id(s.first_id),
            id(s.last_id),
            s.memory_bytes.map_or_else(|| "?".to_string(), human_bytes)
        ))?;
        for group in &s.groups {
            output_result(writeln!(
                out,
                "    group {}  pending {}  lag {}",
                group.name,
                group.pending,
                lag_text(group.lag)
            ))?;
        }
    }
    output_result(writeln!(out, "cache namespaces: {}", caches.len()))?;
    for cache in &caches {
        output_result(writeln!(
            out,
            "  {}  {} key{}",
            cache.namespace,
            cache.keys,
            if cache.keys == 1 { "" } else { "s" }
        ))?;
    }
    output_result(out.flush())
}
