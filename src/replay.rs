//! Replay: a range of one or more topics' streams, read back from Redis and
//! merged in stream-id order ([`LiveBus::replay`](crate::LiveBus::replay)).
//!
//! A replay has its own I/O thread and connection. Each stream is read in pages
//! (`XRANGE … COUNT page`) by its own task, one page ahead of the consumer: while
//! the application decodes a page, the next one is on its way, and no more than
//! three pages per stream are held (one being taken, one queued, one arriving),
//! whatever the range's length. A page crosses to the consumer as the transport
//! parsed it; its entries are walked there, in place. The consumer side
//! merges the streams by (stream id, topic name): the same range always yields
//! the same sequence.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::config::RedisConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Pattern, StartAt, StreamId, TopicName};
use crate::io::spawn_io_thread;
use crate::recording::ReplayedEvent;
use crate::transport::keys;
use crate::transport::redis::{
    info_stream_id, info_u64, Connection, PageEntries, PageEntry, RangePage,
};
use crate::transport::RawEntry;
use crate::wire::{self, EntryLimits, Fields};

/// Where a replay ends (where it starts is a [`StartAt`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StopAt {
    /// The newest entry when the replay starts (later entries are not part of it).
    #[default]
    End,
    /// This stream id, inclusive.
    Id(StreamId),
    /// The last entry of this millisecond (by its stream id, the Redis server's
    /// clock), inclusive.
    Time(SystemTime),
    /// Everything stored, then every entry written later, as it is written
    /// (catch-up, then live). The replay never ends; the seam is by stream id,
    /// so nothing is missed or repeated between the two. Live entries come in
    /// the order they are read: per stream in stream order, and across streams
    /// by (stream id, topic) within each read. A pattern follows the streams
    /// that existed when the replay started.
    Live,
}

/// What a replay does when its range starts before the oldest entry a stream
/// still holds (entries were trimmed or deleted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnTrimmed {
    /// Refuse: [`LiveBus::replay`](crate::LiveBus::replay) fails with
    /// [`ErrorKind::Trimmed`].
    #[default]
    Error,
    /// Start at the oldest entry held, and report the gap in
    /// [`Replay::gaps`] (and a warning in the log).
    Report,
}

/// The range and paging of a replay.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tickbus::StartAt;
/// use tickbus::replay::{OnTrimmed, ReplayOptions, StopAt};
///
/// let last_hour = ReplayOptions {
///     from: StartAt::Time(SystemTime::now() - Duration::from_secs(3600)),
///     on_trimmed: OnTrimmed::Report,
///     ..Default::default()
/// };
/// assert_eq!(last_hour.to, StopAt::End);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Where the range starts. Default [`StartAt::Beginning`]; `New` replays
    /// nothing stored (with `to: StopAt::Live`, only what is written from now
    /// on); `Resume` is refused (`InvalidConfig`).
    pub from: StartAt,
    /// Where it ends. Default [`StopAt::End`].
    pub to: StopAt,
    /// Entries per `XRANGE` page. Default 1 000.
    pub page: usize,
    /// A range that starts before what a stream still holds. Default
    /// [`OnTrimmed::Error`].
    pub on_trimmed: OnTrimmed,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            from: StartAt::Beginning,
            to: StopAt::End,
            page: 1_000,
            on_trimmed: OnTrimmed::Error,
        }
    }
}

/// A part of a requested range that the stream no longer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrimmedRange {
    /// The topic.
    pub topic: TopicName,
    /// Where the range was asked to start.
    pub requested: StreamId,
    /// The oldest entry the stream holds (`None`: it holds nothing).
    pub first_retained: Option<StreamId>,
}

/// What one stream's reading task sends: a page, or why it stopped.
type Page = Result<RangePage>;

/// One stream being read: the page being walked (as the reply arrived: nothing
/// is converted or copied on the I/O thread) and its next entry.
struct Cursor {
    topic: TopicName,
    pages: mpsc::Receiver<Page>,
    entries: PageEntries,
    head: Option<(StreamId, PageEntry)>,
    done: bool,
}

/// The live part of a catch-up-then-live replay: batches of entries read after
/// the range, per stream (index into the cursors).
struct Live {
    batches: mpsc::Receiver<Result<Vec<(usize, RawEntry)>>>,
    buffer: VecDeque<(usize, RawEntry)>,
}

/// A replay in progress: a `Stream` of [`ReplayedEvent`]s in (stream id, topic)
/// order (also [`recv`](Replay::recv), [`recv_blocking`](Replay::recv_blocking)).
/// An entry that is not a tickbus entry yields an error item naming it, and the
/// replay goes on. Dropping it stops its I/O thread.
pub struct Replay {
    cursors: Vec<Cursor>,
    live: Option<Live>,
    gaps: Vec<TrimmedRange>,
    /// [`recv_blocking`](Replay::recv_blocking)'s waker, for the thread that
    /// last called it (made once, not per event).
    thread_waker: Option<(std::thread::ThreadId, std::task::Waker)>,
    _thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay")
            .field(
                "topics",
                &self.cursors.iter().map(|c| &c.topic).collect::<Vec<_>>(),
            )
            .field("gaps", &self.gaps)
            .finish_non_exhaustive()
    }
}

/// What the I/O thread found before reading: per stream, its topic, key and
/// bounds (or nothing to read).
struct Plan {
    topic: TopicName,
    key: String,
    /// `XRANGE` bounds; `None`: nothing to read.
    range: Option<(String, String)>,
    /// Live reading starts after this id…
    live_after: StreamId,
    /// …and skips entries before this one (the range's start).
    live_from: StreamId,
}

impl Replay {
    pub(crate) fn start(
        redis: RedisConfig,
        topics: Vec<String>,
        options: ReplayOptions,
    ) -> Result<Replay> {
        if options.from == StartAt::Resume {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "ReplayOptions::from cannot be StartAt::Resume: a replay has no saved position \
                 (start After the last stream id you processed)",
            ));
        }
        if options.page == 0 || options.page > 100_000 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "ReplayOptions::page must be 1..=100000",
            ));
        }
        let mut names = Vec::new();
        let mut patterns = Vec::new();
        for topic in &topics {
            if topic.contains(['*', '>']) {
                patterns.push(Pattern::new(topic)?);
            } else {
                names.push(TopicName::new(topic)?);
            }
        }
        let (setup_tx, setup_rx) = std::sync::mpsc::channel();
        let config = redis.clone();
        let thread = spawn_io_thread("tickbus-replay", &redis, "replay", move |connection| {
            run(connection, config, names, patterns, options, setup_tx)
        })?;
        let (cursors, live, gaps) = match setup_rx.recv() {
            Ok(Ok(setup)) => setup,
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "the replay's I/O thread stopped during start-up",
                ))
            }
        };
        Ok(Replay {
            cursors,
            live,
            gaps,
            thread_waker: None,
            _thread: Some(thread.thread),
        })
    }

    /// The parts of the range the streams no longer hold (with
    /// [`OnTrimmed::Report`]; empty otherwise, or when nothing is missing).
    pub fn gaps(&self) -> &[TrimmedRange] {
        &self.gaps
    }

    /// The next event; `None` at the end of the range. Cancel safe.
    pub async fn recv(&mut self) -> Option<Result<ReplayedEvent>> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// As [`recv`](Replay::recv), blocking this thread (not from async code).
    pub fn recv_blocking(&mut self) -> Option<Result<ReplayedEvent>> {
        let thread = std::thread::current();
        let waker = match &self.thread_waker {
            Some((id, waker)) if *id == thread.id() => waker.clone(),
            _ => {
                let id = thread.id();
                let waker = std::task::Waker::from(Arc::new(ThreadWaker(thread)));
                self.thread_waker = Some((id, waker.clone()));
                waker
            }
        };
        let mut cx = Context::from_waker(&waker);
        loop {
            match self.poll_event(&mut cx) {
                Poll::Ready(item) => return item,
                Poll::Pending => std::thread::park_timeout(Duration::from_millis(50)),
            }
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<ReplayedEvent>>> {
        let mut waiting = false;
        for cursor in &mut self.cursors {
            match cursor.fill(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Some(Err(error))),
                Poll::Pending => waiting = true,
            }
        }
        if waiting {
            return Poll::Pending; // every stream's head is needed to merge
        }
        // The smallest (stream id, topic); topics are distinct and sorted.
        let mut next: Option<(StreamId, usize)> = None;
        for (i, cursor) in self.cursors.iter().enumerate() {
            if let Some((id, _)) = &cursor.head {
                if next.is_none_or(|(min, _)| *id < min) {
                    next = Some((*id, i));
                }
            }
        }
        let Some((_, i)) = next else {
            return self.poll_live(cx);
        };
        let cursor = &mut self.cursors[i];
        let (id, entry) = cursor.head.take().expect("a head was found");
        Poll::Ready(Some(to_event(&cursor.topic, id, &entry)))
    }
}

impl Cursor {
    /// Makes sure the cursor has its next entry at its head, or is done. An
    /// entry without a readable id is an error item (and skipped).
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        while self.head.is_none() && !self.done {
            if let Some(entry) = self.entries.next() {
                match entry.id() {
                    Some(id) => self.head = Some((id, entry)),
                    None => {
                        return Poll::Ready(Err(Error::new(
                            ErrorKind::Malformed,
                            format!("topic {}: an entry without a readable id", self.topic),
                        )))
                    }
                }
                continue;
            }
            match self.pages.poll_recv(cx) {
                Poll::Ready(Some(Ok(page))) => self.entries = page.into_entries(),
                Poll::Ready(Some(Err(error))) => {
                    self.done = true;
                    return Poll::Ready(Err(error));
                }
                Poll::Ready(None) => self.done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Replay {
    /// After the range: the live entries, as read.
    fn poll_live(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<ReplayedEvent>>> {
        let Some(live) = &mut self.live else {
            return Poll::Ready(None);
        };
        loop {
            if let Some((i, entry)) = live.buffer.pop_front() {
                let topic = &self.cursors[i].topic;
                return Poll::Ready(Some(to_event(topic, entry.id, entry.fields())));
            }
            match live.batches.poll_recv(cx) {
                Poll::Ready(Some(Ok(batch))) => live.buffer.extend(batch),
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Iterator for Replay {
    type Item = Result<ReplayedEvent>;

    /// [`recv_blocking`](Replay::recv_blocking).
    fn next(&mut self) -> Option<Self::Item> {
        self.recv_blocking()
    }
}

struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

impl futures_core::Stream for Replay {
    type Item = Result<ReplayedEvent>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx)
    }
}

/// The event of one entry (its stream id, and its fields where the transport
/// holds them), without decoding its payload: the payload is the reply's own
/// buffer, shared, not copied.
fn to_event<'a>(topic: &TopicName, id: StreamId, fields: impl Fields<'a>) -> Result<ReplayedEvent> {
    let entry = wire::parse(fields, &EntryLimits::default())
        .map_err(|error| error.at(format_args!("topic {topic}, entry {id}")))?;
    Ok(ReplayedEvent {
        topic: topic.clone(),
        stream_id: id,
        event_id: entry.event_id,
        source: entry.source,
        timestamp_ns: entry.timestamp_ns,
        data: entry.payload.clone(),
        headers: entry.headers,
    })
}

type Setup = (Vec<Cursor>, Option<Live>, Vec<TrimmedRange>);

async fn run(
    connection: Connection,
    redis: RedisConfig,
    names: Vec<TopicName>,
    patterns: Vec<Pattern>,
    options: ReplayOptions,
    setup: std::sync::mpsc::Sender<Result<Setup>>,
) {
    let plans = match plan(&connection, &redis, names, &patterns, &options).await {
        Ok(plans) => plans,
        Err(error) => {
            let _ = setup.send(Err(error));
            return;
        }
    };
    let (plans, gaps) = plans;
    let mut cursors = Vec::with_capacity(plans.len());
    let mut tasks = Vec::with_capacity(plans.len());
    let mut live = None;
    if options.to == StopAt::Live {
        // Its own connection: a blocked `XREAD` holds everything queued behind it.
        let follower = match Connection::open(&redis, "replay live").await {
            Ok((follower, _)) => follower,
            Err(error) => {
                let _ = setup.send(Err(error));
                return;
            }
        };
        let (tx, rx) = mpsc::channel(4);
        live = Some(Live {
            batches: rx,
            buffer: VecDeque::new(),
        });
        let follow: Vec<(usize, String, StreamId, StreamId)> = plans
            .iter()
            .enumerate()
            .map(|(i, plan)| (i, plan.key.clone(), plan.live_after, plan.live_from))
            .collect();
        let block = redis.read_block;
        tasks.push(tokio::spawn(async move {
            follow_live(&follower, follow, options.page, block, tx).await;
            follower.close().await;
        }));
    }
    for plan in plans {
        // One page ahead: the channel holds one, the task reads the next.
        let (tx, rx) = mpsc::channel(1);
        cursors.push(Cursor {
            topic: plan.topic.clone(),
            pages: rx,
            entries: PageEntries::default(),
            head: None,
            done: false,
        });
        tasks.push(tokio::spawn(read_stream(
            connection.clone(),
            plan,
            options.page,
            redis.reconnect_max,
            tx,
        )));
    }
    if setup.send(Ok((cursors, live, gaps))).is_err() {
        return;
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// The streams to read and their bounds; the gaps found.
async fn plan(
    connection: &Connection,
    redis: &RedisConfig,
    mut names: Vec<TopicName>,
    patterns: &[Pattern],
    options: &ReplayOptions,
) -> Result<(Vec<Plan>, Vec<TrimmedRange>)> {
    let prefix = &redis.key_prefix;
    if !patterns.is_empty() {
        for key in connection
            .scan_streams(&keys::scan_pattern(prefix, "stream"))
            .await?
        {
            let topic = key
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_prefix(":stream:{"))
                .and_then(|rest| rest.strip_suffix('}'))
                .and_then(|name| TopicName::new(name).ok());
            if let Some(topic) = topic {
                if patterns.iter().any(|pattern| pattern.matches(&topic)) {
                    names.push(topic);
                }
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    let mut plans = Vec::new();
    let mut gaps = Vec::new();
    for topic in names {
        let key = crate::transport::stream_key(prefix, &topic);
        let info = match connection.info("STREAM", &key, None).await {
            Ok(info) => info.into_iter().next().unwrap_or_default(),
            Err(error) if error.message().contains("no such key") => Vec::new(),
            Err(error) => return Err(error),
        };
        let first = info_stream_id(&info, "first-entry");
        let last = info_stream_id(&info, "last-entry");
        // The first id of the range, inclusive (`None`: from the oldest held).
        let start = match options.from {
            StartAt::Beginning => None,
            StartAt::New => last.map(StreamId::successor),
            StartAt::After(id) => Some(id.successor()),
            StartAt::At(id) => Some(id),
            StartAt::Time(time) => Some(StreamId::first_of(time)),
            StartAt::Resume => None, // refused in `start`
        };
        let end = match options.to {
            StopAt::End | StopAt::Live => last,
            StopAt::Id(id) => Some(id),
            StopAt::Time(time) => Some(StreamId::new(StreamId::first_of(time).ms, u64::MAX)),
        };
        if let Some(start) = start {
            // The stream lost entries (trims remove the oldest; `XDEL` records
            // the newest id it deleted). Redis does not keep the first id it
            // ever held, so a range that starts before the oldest entry of a
            // stream that lost entries counts as a gap: reported, never silent,
            // even if what was lost came before `start`. Servers before 7.0 do
            // not say: there any range before the oldest entry counts.
            let removed = match (
                info_u64(&info, "entries-added"),
                info_u64(&info, "length"),
                info_stream_id(&info, "max-deleted-entry-id"),
            ) {
                (Some(added), Some(length), max_deleted) => {
                    added > length
                        || max_deleted.is_some_and(|id| id >= start && id != StreamId::ZERO)
                }
                _ => true,
            };
            let before_first = first.is_none_or(|first| start < first);
            if before_first && removed && !info.is_empty() {
                let gap = TrimmedRange {
                    topic: topic.clone(),
                    requested: start,
                    first_retained: first,
                };
                match options.on_trimmed {
                    OnTrimmed::Error => {
                        return Err(Error::new(
                            ErrorKind::Trimmed,
                            format!(
                                "replay of {topic} from {start}: the stream's oldest entry is {}; \
                                 what came before was trimmed or deleted",
                                first.map_or_else(
                                    || "none (it is empty)".to_string(),
                                    |f| f.to_string()
                                )
                            ),
                        ))
                    }
                    OnTrimmed::Report => {
                        tracing::warn!(%topic, requested = %start, first = ?first, "tickbus: replay range starts before the oldest entry held");
                        gaps.push(gap);
                    }
                }
            }
        }
        let range = match (last, end) {
            (Some(_), Some(end)) => Some((
                start.map_or_else(|| "-".to_string(), |s| s.to_string()),
                end.to_string(),
            )),
            _ => None, // an empty stream, or a range that ends before it
        };
        if range.is_none() && options.to != StopAt::Live {
            continue;
        }
        plans.push(Plan {
            topic,
            key,
            range,
            live_after: last.unwrap_or(StreamId::ZERO),
            live_from: start.unwrap_or(StreamId::ZERO),
        });
    }
    Ok((plans, gaps))
}

/// Reads one stream's range page by page, one page ahead of the consumer.
async fn read_stream(
    connection: Connection,
    plan: Plan,
    page: usize,
    max_backoff: Duration,
    pages: mpsc::Sender<Page>,
) {
    let Some((mut start, end)) = plan.range else {
        return;
    };
    let mut failures = 0_u32;
    loop {
        match connection.range_page(&plan.key, &start, &end, page).await {
            Ok(entries) => {
                failures = 0;
                let full = entries.len() == page;
                let last = match entries.last_id() {
                    Ok(Some(last)) => last,
                    Ok(None) => return,
                    Err(error) => {
                        let _ = pages.send(Err(error)).await;
                        return;
                    }
                };
                if pages.send(Ok(entries)).await.is_err() || !full {
                    return; // the replay was dropped, or this was the last page
                }
                start = format!("({last}");
            }
            Err(error) => {
                failures += 1;
                if failures > 10 || error.kind() == ErrorKind::Redis {
                    let _ = pages.send(Err(error)).await;
                    return;
                }
                let delay =
                    (Duration::from_millis(20) * 2_u32.pow(failures.min(8))).min(max_backoff);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The live part of a replay: `XREAD BLOCK` over every stream, from the end of
/// its range, on its own connection.
async fn follow_live(
    connection: &Connection,
    streams: Vec<(usize, String, StreamId, StreamId)>,
    count: usize,
    block: Duration,
    batches: mpsc::Sender<Result<Vec<(usize, RawEntry)>>>,
) {
    let mut after: Vec<StreamId> = streams.iter().map(|s| s.2).collect();
    let mut failures = 0_u32;
    loop {
        let ids: Vec<(&str, StreamId)> = streams
            .iter()
            .zip(&after)
            .map(|(s, id)| (s.1.as_str(), *id))
            .collect();
        match connection.read(&ids, count, Some(block)).await {
            Ok(reply) => {
                failures = 0;
                let mut batch = Vec::new();
                for (key, entries) in reply {
                    let Some(at) = streams.iter().position(|s| s.1 == key) else {
                        continue;
                    };
                    if let Some(last) = entries.last() {
                        after[at] = last.id;
                    }
                    let from = streams[at].3;
                    batch.extend(
                        entries
                            .into_iter()
                            .filter(|entry| entry.id >= from)
                            .map(|entry| (streams[at].0, entry)),
                    );
                }
                batch.sort_by(|a, b| a.1.id.cmp(&b.1.id).then(a.0.cmp(&b.0)));
                if batch.is_empty() {
                    if batches.is_closed() {
                        return;
                    }
                    continue;
                }
                if batches.send(Ok(batch)).await.is_err() {
                    return; // the replay was dropped
                }
            }
            Err(error) => {
                if error.kind() == ErrorKind::Redis {
                    let _ = batches.send(Err(error)).await;
                    return;
                }
                failures = failures.saturating_add(1);
                tracing::warn!(%error, "tickbus: live replay read failed; retrying");
                if batches.is_closed() {
                    return;
                }
                let delay = (Duration::from_millis(20) * 2_u32.pow(failures.min(8)))
                    .min(Duration::from_secs(2));
                tokio::time::sleep(delay).await;
            }
        }
    }
}
