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

mod events;
mod inspect;
mod parse;

use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use tickbus::admin::Admin;
use tickbus::{Bus, Error, ErrorKind, LiveBus, RedisConfig, StreamId};

use crate::parse::Spot;

use crate::events::{publish, replay, tail};
use crate::inspect::{dlq_list, dlq_requeue, groups, pending, stats};

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

fn live_bus(config: RedisConfig) -> Result<LiveBus, Failure> {
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
