//! The I/O plumbing every Redis-facing part shares, one copy each: the I/O
//! thread (its own single-threaded runtime and connection), the reconnect
//! back-off, and small clock and lock helpers.
//!
//! Layer: above [`transport`](crate::transport) (it opens a
//! [`Connection`]), below the live layer, groups, replay, the cache and admin.

use std::future::Future;
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::RedisConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::transport::redis::Connection;

/// Locks `mutex`, through a poisoned lock too (every critical section in
/// tickbus leaves its data consistent before anything that could panic).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs a blocking call (a set-up round trip, a shutdown that waits for an I/O
/// thread) on a thread of its own and awaits its result: the async twins of
/// blocking calls never block the caller's executor, whatever the executor is.
/// A panic in `job` comes back as an `Unavailable` error.
pub(crate) async fn off_thread<R, F>(job: F) -> Result<R>
where
    R: Send + 'static,
    F: FnOnce() -> Result<R> + Send + 'static,
{
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tickbus-blocking".into())
        .spawn(move || {
            let _ = done.send(job());
        })
        .map_err(|error| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot start a thread: {error}"),
            )
        })?;
    result.await.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::Unavailable,
            "the thread running a blocking call stopped without an answer",
        ))
    })
}

/// Whether stopping an I/O thread waits for it to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Join {
    /// Join it (an explicit `shutdown`, or a drop outside any runtime).
    Wait,
    /// Let it end by itself (a drop on a thread that runs an async executor).
    Detach,
}

impl Join {
    /// `Detach` when called on a thread inside a tokio runtime, where a
    /// destructor must not block, else `Wait`.
    pub(crate) fn unless_in_runtime() -> Join {
        if tokio::runtime::Handle::try_current().is_ok() {
            Join::Detach
        } else {
            Join::Wait
        }
    }
}

/// Ends the wait for an I/O thread already told to stop: joins it, unless
/// `join` says not to or it is the calling thread (an owner dropped on its own
/// I/O thread: it ends by itself).
pub(crate) fn join_io_thread(thread: JoinHandle<()>, join: Join) {
    if join == Join::Detach || thread.thread().id() == std::thread::current().id() {
        return; // dropping the handle detaches the thread
    }
    let _ = thread.join();
}

/// Milliseconds since the Unix epoch by this machine's clock (0 before 1970).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Exponential back-off with jitter, from `reconnect_min` doubling to
/// `reconnect_max`, plus up to 20 %.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(config: &RedisConfig) -> Self {
        Backoff {
            next: config.reconnect_min,
            min: config.reconnect_min,
            max: config.reconnect_max,
        }
    }

    /// The next delay, jittered; the one after doubles.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next + self.next.mul_f64(fastrand::f64() * 0.2);
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Sleeps the next delay.
    pub(crate) async fn sleep(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Sleeps the next delay unless `stop` completes first; `true` if it slept
    /// the whole delay.
    pub(crate) async fn sleep_unless(&mut self, stop: impl Future<Output = ()>) -> bool {
        tokio::select! {
            () = tokio::time::sleep(self.next_delay()) => true,
            () = stop => false,
        }
    }

    /// Back to the shortest delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A started I/O thread: its connection, its runtime, what the server said.
pub(crate) struct IoThread {
    pub(crate) connection: Connection,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) version: (u32, u32, u32),
    pub(crate) thread: JoinHandle<()>,
}

/// Starts an I/O thread with its own single-threaded runtime and connection,
/// and runs `body` on it once connected.
pub(crate) fn spawn_io_thread<F, Fut>(
    name: &str,
    config: &RedisConfig,
    role: &'static str,
    body: F,
) -> Result<IoThread>
where
    F: FnOnce(Connection) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    spawn_io_thread_with(name, config, role, false, body)
}

/// As [`spawn_io_thread`], with a RESP3 connection when `resp3`.
pub(crate) fn spawn_io_thread_with<F, Fut>(
    name: &str,
    config: &RedisConfig,
    role: &'static str,
    resp3: bool,
    body: F,
) -> Result<IoThread>
where
    F: FnOnce(Connection) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (ready_tx, ready_rx) = mpsc::channel();
    let config = config.clone();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_tx.send(Err(Error::new(
                        ErrorKind::Unavailable,
                        format!("cannot start the tickbus I/O runtime: {error}"),
                    )));
                    return;
                }
            };
            runtime.block_on(async move {
                match Connection::open_with(&config, role, resp3).await {
                    Ok((connection, version)) => {
                        let handle = tokio::runtime::Handle::current();
                        if ready_tx
                            .send(Ok((connection.clone(), handle, version)))
                            .is_ok()
                        {
                            body(connection.clone()).await;
                        }
                        connection.close().await;
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                    }
                }
            });
        })
        .map_err(|error| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot start the tickbus I/O thread: {error}"),
            )
        })?;
    match ready_rx.recv() {
        Ok(Ok((connection, runtime, version))) => Ok(IoThread {
            connection,
            runtime,
            version,
            thread,
        }),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(error)
        }
        Err(_) => {
            let _ = thread.join();
            Err(Error::new(
                ErrorKind::Unavailable,
                "the tickbus I/O thread stopped during start-up",
            ))
        }
    }
}

/// The process-wide timer of cache loader timeouts, lock waits and rate-limit
/// waits: one small runtime thread, started on first use, so that callers need
/// no runtime of their own (any executor can await it).
pub(crate) fn sleep(duration: Duration) -> impl Future<Output = ()> + Send + 'static {
    static TIMER: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    let timer = TIMER.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tickbus-timer")
            .enable_time()
            .build()
            .ok()
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    match timer {
        Some(runtime) => {
            runtime.spawn(async move {
                tokio::time::sleep(duration).await;
                let _ = tx.send(());
            });
        }
        None => {
            // No timer thread could start: fall back to a thread per sleep.
            std::thread::spawn(move || {
                std::thread::sleep(duration);
                let _ = tx.send(());
            });
        }
    }
    async move {
        let _ = rx.await;
    }
}
