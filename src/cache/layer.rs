//! The Redis side of the caches of one bus: a RESP3 connection on its own I/O
//! thread, tracking `<prefix>:cache:` in broadcast mode, and the namespaces it
//! tells about changes. Also the process-wide timer of loader timeouts.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::config::RedisConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::io::{spawn_io_thread_with, IoThread};
use crate::transport::keys;
use crate::transport::redis::{Connection, ConnectionEvent, Invalidation};

/// What a namespace's memory layer must do when Redis says a key changed.
pub(crate) trait Invalidate: Send + Sync {
    /// `key` (without the namespace prefix) changed in Redis.
    fn invalidate_key(&self, key: &str);
    /// Anything may have changed: drop every memory entry.
    fn flush(&self);
}

type Registry = HashMap<String, Vec<Weak<dyn Invalidate>>>;

/// The caches' connection of one live bus.
pub(crate) struct Layer {
    io: IoThread,
    /// What the invalidation loop shares with the caches.
    pub(crate) hub: Arc<Hub>,
    /// `<prefix>:lock:cache:`, where the stampede locks live (outside the tracked
    /// prefix: taking a lock must not invalidate anyone's memory).
    pub(crate) lock_prefix: String,
    stop: tokio::sync::watch::Sender<bool>,
}

/// The state the invalidation loop and the caches share.
pub(crate) struct Hub {
    /// `<prefix>:cache:`, the tracked prefix.
    pub(crate) prefix: String,
    /// Raised on every event after which memory entries filled from an earlier
    /// read can no longer be trusted (connection lost or re-established,
    /// invalidations lost, a flush). See `Cache::fill`.
    pub(crate) epoch: AtomicU64,
    /// [`TRACKED`], [`DOWN`] or [`UNTRACKED`]: whether memory may serve.
    state: AtomicU8,
    /// The `CLIENT ID` of the connection tracking was last confirmed on.
    tracked_id: AtomicU64,
    namespaces: Mutex<Registry>,
}

/// How often the invalidation loop checks that a connection that is up has
/// tracking confirmed (events can lag or arrive out of order).
const TRACKING_CHECK: Duration = Duration::from_secs(1);

/// Tracking is confirmed on the current connection: every change by another
/// connection is pushed to us. Memory serves.
const TRACKED: u8 = 0;
/// The connection is lost (memory was flushed when it went): nothing reaches
/// Redis through it, and what memory holds was loaded since. Memory serves,
/// each entry for at most its memory TTL.
const DOWN: u8 = 1;
/// Connected, but tracking not (yet) confirmed on this connection: another
/// instance's change would not be pushed. Memory does not serve.
const UNTRACKED: u8 = 2;

impl Layer {
    /// Connects (RESP3), starts tracking, and starts the invalidation loop.
    pub(crate) fn start(config: &RedisConfig) -> Result<Layer> {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let hub = Arc::new(Hub {
            prefix: keys::cache_prefix(&config.key_prefix),
            epoch: AtomicU64::new(0),
            state: AtomicU8::new(UNTRACKED),
            tracked_id: AtomicU64::new(0),
            namespaces: Mutex::new(HashMap::new()),
        });
        let loop_hub = Arc::clone(&hub);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let io = spawn_io_thread_with(
            "tickbus-cache",
            config,
            "cache",
            true,
            move |connection: Connection| async move {
                let hub = loop_hub;
                let mut invalidations = connection.invalidations();
                let mut events = connection.events();
                // Tracking before anything is read through this connection; a
                // server that refuses it (an ACL without CLIENT) fails the start.
                let tracked = connection.ensure_tracking(&hub.prefix).await;
                let failed = tracked.is_err();
                if let Ok(id) = &tracked {
                    hub.confirmed(*id);
                }
                let _ = ready_tx.send(tracked.map(|_| ()));
                if failed {
                    return;
                }
                // Events of a connection already replaced can arrive after
                // those of its successor: the state is checked against the
                // connection itself, on every event and once a second.
                let mut check = tokio::time::interval(TRACKING_CHECK);
                check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stopped.changed() => return,
                        _ = check.tick() => {
                            if !hub.tracking() && connection.is_connected() {
                                hub.state.store(UNTRACKED, Ordering::SeqCst);
                                track(&connection, &hub, &mut stopped).await;
                            }
                        }
                        invalidation = invalidations.next() => match invalidation {
                            Some(Invalidation::Keys(keys)) => {
                                for key in keys {
                                    hub.invalidated(&key);
                                }
                            }
                            Some(Invalidation::All) => hub.flush_all(),
                            None => return,
                        },
                        // fred's events lag in a burst of reconnects (its channel
                        // holds 32); a lagged read reports the state as it is now,
                        // and a confirmation checks the connection it ran on, so
                        // no order of events is assumed.
                        event = events.next() => match event {
                            Some(ConnectionEvent::Lost(_)) if connection.is_connected() => {
                                // The error of a connection already replaced (or
                                // of this one, not yet seen as lost): check the
                                // connection of the moment.
                                verify(&connection, &hub, &mut stopped).await;
                            }
                            Some(ConnectionEvent::Lost(error)) => {
                                // Once per outage (fred reports every failed
                                // reconnect): what loaders fill meanwhile stays.
                                if hub.state.swap(DOWN, Ordering::SeqCst) != DOWN {
                                    tracing::warn!(%error, "cache connection lost: memory layers flushed");
                                    hub.flush_all();
                                }
                            }
                            Some(ConnectionEvent::Reconnected) => {
                                // A new connection tracks nothing: what was read
                                // on the old one, or on this one before tracking
                                // is back, may be stale, and memory stops serving
                                // until tracking is confirmed on it.
                                hub.state.store(UNTRACKED, Ordering::SeqCst);
                                hub.flush_all();
                                track(&connection, &hub, &mut stopped).await;
                            }
                            None => return,
                        },
                    }
                }
            },
        )?;
        let started = ready_rx
            .recv_timeout(config.connect_timeout * 2)
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Unavailable,
                    "the cache connection did not start tracking in time",
                ))
            });
        if let Err(error) = started {
            let _ = stop.send(true);
            let _ = io.thread.join();
            return Err(Error::new(
                error.kind(),
                format!(
                    "cannot start the cache's CLIENT TRACKING: {}",
                    error.message()
                ),
            ));
        }
        Ok(Layer {
            io,
            lock_prefix: keys::cache_lock_prefix(&config.key_prefix),
            hub,
            stop,
        })
    }
    /// Runs `job` with the connection; the returned future is runtime-agnostic.
    ///
    /// Called from a tokio runtime, the job runs right there (fred's commands
    /// need a tokio context for their timeouts, and nothing else of the caller's
    /// runtime): the command goes straight to the connection's task, as with a
    /// bare fred client. Called from anywhere else, it is spawned on the cache
    /// I/O thread, one hop more each way.
    pub(crate) fn run<R, F, Fut>(&self, job: F) -> impl Future<Output = Result<R>> + Send + 'static
    where
        R: Send + 'static,
        F: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
    {
        let connection = self.io.connection.clone();
        let spawned = if tokio::runtime::Handle::try_current().is_ok() {
            Err(job)
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let connection = connection.clone();
            self.io.runtime.spawn(async move {
                let _ = tx.send(job(connection).await);
            });
            Ok(rx)
        };
        async move {
            match spawned {
                Err(job) => job(connection).await,
                Ok(rx) => rx.await.unwrap_or_else(|_| {
                    Err(Error::new(ErrorKind::Closed, "the bus has shut down"))
                }),
            }
        }
    }

    /// Stops the I/O thread (the caches then serve memory and loaders only).
    pub(crate) fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

impl Hub {
    /// Whether tracking is confirmed on the current connection (a value read
    /// from Redis now will be invalidated when it changes).
    pub(crate) fn tracking(&self) -> bool {
        self.state.load(Ordering::SeqCst) == TRACKED
    }

    /// Whether memory may serve values: tracking is confirmed, or the
    /// connection is down (see [`DOWN`]). One load on the hit path.
    #[inline]
    pub(crate) fn serving(&self) -> bool {
        self.state.load(Ordering::Acquire) != UNTRACKED
    }

    /// Tracking was confirmed on connection `id`: drop what was read before
    /// (not tracked), then serve.
    fn confirmed(&self, id: u64) {
        self.flush_all();
        self.tracked_id.store(id, Ordering::SeqCst);
        self.state.store(TRACKED, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Registers a namespace's memory layer for invalidations.
    pub(crate) fn register(&self, namespace: &str, memory: Weak<dyn Invalidate>) {
        let mut namespaces = self
            .namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let list = namespaces.entry(namespace.to_string()).or_default();
        list.retain(|weak| weak.strong_count() > 0);
        list.push(memory);
    }

    fn members(&self, namespace: &str) -> Vec<Arc<dyn Invalidate>> {
        let namespaces = self
            .namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        namespaces
            .get(namespace)
            .map(|list| list.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }

    /// This process changed `key` of `namespace` in Redis: the server does not
    /// tell this connection (NOLOOP), so the other caches of the namespace in this
    /// process are told here. `except` is the one that made the change.
    pub(crate) fn changed_locally(&self, namespace: &str, key: &str, except: *const ()) {
        for member in self.members(namespace) {
            if !std::ptr::addr_eq(Arc::as_ptr(&member), except) {
                member.invalidate_key(key);
            }
        }
    }

    /// As `changed_locally`, for a whole namespace.
    pub(crate) fn flushed_locally(&self, namespace: &str, except: *const ()) {
        for member in self.members(namespace) {
            if !std::ptr::addr_eq(Arc::as_ptr(&member), except) {
                member.flush();
            }
        }
    }

    /// The server says `key` (full Redis key) changed.
    fn invalidated(&self, key: &[u8]) {
        let Some(rest) = key.strip_prefix(self.prefix.as_bytes()) else {
            return;
        };
        let Ok(rest) = std::str::from_utf8(rest) else {
            return;
        };
        let Some((namespace, key)) = rest.split_once(':') else {
            return;
        };
        for member in self.members(namespace) {
            member.invalidate_key(key);
        }
    }

    /// Every memory layer of every namespace forgets everything.
    pub(crate) fn flush_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let all: Vec<Arc<dyn Invalidate>> = {
            let namespaces = self
                .namespaces
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            namespaces
                .values()
                .flatten()
                .filter_map(Weak::upgrade)
                .collect()
        };
        for member in all {
            member.flush();
        }
    }
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layer")
            .field("prefix", &self.hub.prefix)
            .field("tracking", &self.hub.tracking())
            .field("tracked_id", &self.hub.tracked_id.load(Ordering::Relaxed))
            .finish()
    }
}

impl Drop for Layer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// After an event that may or may not concern the connection of the moment:
/// nothing changes if tracking is confirmed on it already; otherwise memory is
/// flushed and tracking enabled again (or the layer is down).
async fn verify(
    connection: &Connection,
    hub: &Hub,
    stopped: &mut tokio::sync::watch::Receiver<bool>,
) {
    match connection.ensure_tracking(&hub.prefix).await {
        Ok(id) if hub.tracking() && id == hub.tracked_id.load(Ordering::SeqCst) => {}
        Ok(id) => hub.confirmed(id),
        Err(_) if !connection.is_connected() => {
            if hub.state.swap(DOWN, Ordering::SeqCst) != DOWN {
                hub.flush_all();
            }
        }
        Err(_) => {
            hub.state.store(UNTRACKED, Ordering::SeqCst);
            hub.flush_all();
            track(connection, hub, stopped).await;
        }
    }
}

/// (Re-)enables tracking, retrying with a back-off until it is confirmed on
/// the connection of the moment or the layer stops; flushes once it holds
/// (reads made before were not tracked).
async fn track(
    connection: &Connection,
    hub: &Hub,
    stopped: &mut tokio::sync::watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(20);
    loop {
        match connection.ensure_tracking(&hub.prefix).await {
            Ok(id) => {
                hub.confirmed(id);
                return;
            }
            Err(error) if !connection.is_connected() => {
                // Down again: nothing to track until it is back (the
                // reconnect event, or the periodic check, tracks then).
                tracing::debug!(%error, "cache connection down while enabling CLIENT TRACKING");
                hub.state.store(DOWN, Ordering::SeqCst);
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot enable CLIENT TRACKING; retrying");
                tokio::select! {
                    _ = stopped.changed() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The process-wide timer (it lives in `io`, shared with the rate limiters).
pub(crate) use crate::io::sleep;
