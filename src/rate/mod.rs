//! Rate limits shared by every instance through Redis: an exchange's order
//! rate, an LLM provider's requests per minute.
//!
//! A [`RateLimiter`] (from [`LiveBus::rate_limiter`](crate::LiveBus::rate_limiter))
//! decides each request with GCRA (the generic cell rate algorithm) in one
//! server-side script: one round trip, atomic, on the Redis server's clock (no
//! skew between instances). Its state is one key, `<prefix>:rate:{<name>}`.
//!
//! For a [`Quota`] of `limit` permits per `period` with `burst`, the limiter
//! admits at most `burst + 1` permits at one instant from idle, and at most
//! `limit + burst` in any window of one period. When Redis is away it fails
//! closed, or answers from an in-process limiter with a quota of its own
//! ([`OnRedisDown`]); [`RateLimiter::mode`] says which. The guide,
//! [`guide::rate_limits`](crate::guide::rate_limits), has the rule and its bound.
//!
//! # Examples
//!
//! ```no_run
//! use tickbus::{Bus, RedisConfig};
//! use tickbus::rate::Quota;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build_async().await?;
//! // The exchange allows 10 orders a second, bursts of 5 more.
//! let orders = bus.rate_limiter("binance.orders", Quota::per_second(10).with_burst(5))?;
//! orders.acquire(1).await?; // waits until every instance together is within the quota
//! // ... send the order
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorKind, Result};
use crate::io::lock;
use crate::transport::keys;
use crate::transport::redis::{Connection, GcraReply};

/// How many permits, per which period, with how much burst.
///
/// The emission interval is `T = period / limit`, rounded up to a whole
/// microsecond (so a limiter is never looser than its quota).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tickbus::rate::Quota;
///
/// let orders = Quota::per_second(10).with_burst(5);
/// assert_eq!(orders.limit(), 10);
/// assert_eq!(orders.period(), Duration::from_secs(1));
/// assert_eq!(orders.burst(), 5);
/// assert_eq!(orders.max_permits(), 6); // at one instant, from idle
/// assert_eq!(Quota::per_minute(600).emission_interval(), Duration::from_millis(100));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u32,
    period: Duration,
    burst: u32,
}

impl Quota {
    /// `limit` permits a second, no burst.
    pub const fn per_second(limit: u32) -> Quota {
        Quota::per(limit, Duration::from_secs(1))
    }

    /// `limit` permits a minute, no burst.
    pub const fn per_minute(limit: u32) -> Quota {
        Quota::per(limit, Duration::from_secs(60))
    }

    /// `limit` permits per `period`, no burst.
    pub const fn per(limit: u32, period: Duration) -> Quota {
        Quota {
            limit,
            period,
            burst: 0,
        }
    }

    /// The same quota, with `burst` permits more allowed at once (and in any
    /// window of one period).
    #[must_use]
    pub const fn with_burst(self, burst: u32) -> Quota {
        Quota { burst, ..self }
    }

    /// Permits per period.
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// The period.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// The burst.
    pub const fn burst(&self) -> u32 {
        self.burst
    }

    /// The most permits one acquire may ask for: `burst + 1` (what is admitted
    /// at one instant from idle). More can never be admitted at once.
    pub const fn max_permits(&self) -> u32 {
        self.burst.saturating_add(1)
    }

    /// `T = period / limit`, rounded up to a whole microsecond.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_micros(self.interval_us())
    }

    fn interval_us(&self) -> u64 {
        let period = u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX);
        period.div_ceil(u64::from(self.limit.max(1))).max(1)
    }

    fn tolerance_us(&self) -> u64 {
        u64::from(self.burst).saturating_mul(self.interval_us())
    }

    /// Checks the quota: a limit of at least 1, a period of at least 1 µs and
    /// at most a day, a burst below a million (the script's numbers stay exact).
    fn validate(&self, what: &str) -> Result<()> {
        let bad = |why: &str| {
            Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("{what}: {why}"),
            ))
        };
        if self.limit == 0 {
            return bad("a quota's limit must be at least 1");
        }
        if self.period < Duration::from_micros(1) || self.period > Duration::from_secs(86_400) {
            return bad("a quota's period must be between 1 µs and one day");
        }
        if self.burst >= 1_000_000 {
            return bad("a quota's burst must be below 1,000,000");
        }
        Ok(())
    }
}

/// What a limiter does when Redis cannot be reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnRedisDown {
    /// Refuse: every acquire fails with [`ErrorKind::Unavailable`] until Redis
    /// is back. Never over the shared quota. The default.
    #[default]
    FailClosed,
    /// Answer from an in-process limiter with this quota until Redis is back
    /// (give it this instance's share of the shared quota: instances do not
    /// see each other's local permits).
    Local(Quota),
}

/// Options of a [`RateLimiter`].
///
/// # Examples
///
/// ```
/// use tickbus::rate::{OnRedisDown, Quota, RateLimiterOptions};
///
/// // Two instances share 10/s; without Redis each keeps to half.
/// let options = RateLimiterOptions {
///     on_redis_down: OnRedisDown::Local(Quota::per_second(5).with_burst(1)),
///     ..Default::default()
/// };
/// assert_ne!(options, RateLimiterOptions::default());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimiterOptions {
    /// Fail closed (the default) or fall back to a local quota.
    pub on_redis_down: OnRedisDown,
}

/// Who decided the last acquire of a limiter (see [`RateLimiter::mode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// The shared limiter in Redis (also before the first acquire).
    Shared,
    /// Redis is away: the local fallback quota ([`OnRedisDown::Local`]).
    Local,
    /// Redis is away and the limiter fails closed: acquires fail.
    FailingClosed,
}

const SHARED: u8 = 0;
const LOCAL: u8 = 1;
const FAILING_CLOSED: u8 = 2;

/// Permits admitted.
///
/// # Examples
///
/// ```no_run
/// use tickbus::{Bus, RedisConfig};
/// use tickbus::rate::{Mode, Quota};
///
/// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
/// let llm = bus.rate_limiter("openrouter", Quota::per_minute(60))?;
/// let permit = llm.acquire_blocking(1)?;
/// assert_eq!(permit.permits, 1);
/// assert_eq!(permit.decided_by, Mode::Shared);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Permit {
    /// How many permits.
    pub permits: u32,
    /// When they were admitted, by the clock that decided: the Redis server's
    /// for [`Mode::Shared`], this machine's for [`Mode::Local`].
    pub at: SystemTime,
    /// Who decided: [`Mode::Shared`] or [`Mode::Local`].
    pub decided_by: Mode,
}

/// The answer of [`RateLimiter::try_acquire`].
///
/// # Examples
///
/// ```no_run
/// use tickbus::{Bus, RedisConfig};
/// use tickbus::rate::{Acquire, Quota};
///
/// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
/// let orders = bus.rate_limiter("binance.orders", Quota::per_second(10))?;
/// match orders.try_acquire_blocking(1)? {
///     Acquire::Admitted(_) => println!("send the order"),
///     Acquire::Limited { retry_after } => println!("not before {retry_after:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Acquire {
    /// Admitted: go ahead.
    Admitted(Permit),
    /// Over the quota now; the same request would be admitted `retry_after`
    /// from now if nobody else takes permits meanwhile.
    Limited {
        /// How long to wait before asking again.
        retry_after: Duration,
    },
}

/// Counters of one limiter (shared by its clones), and who decides now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimiterStats {
    /// Who decided the last acquire.
    pub mode: Mode,
    /// Acquires admitted by the shared limiter.
    pub admitted: u64,
    /// Acquires the shared limiter answered with a retry-after.
    pub limited: u64,
    /// Acquires answered with a retry-after without a round trip: an earlier
    /// refusal of the shared limiter (of as many permits or fewer) proved
    /// they could not be admitted yet.
    pub limited_without_round_trip: u64,
    /// Acquires admitted by the local fallback.
    pub local_admitted: u64,
    /// Acquires the local fallback answered with a retry-after.
    pub local_limited: u64,
    /// Acquires that failed because Redis was away (failing closed).
    pub unavailable: u64,
}

/// The GCRA rule, shared by the script (which mirrors it) and the local
/// limiter: from the stored theoretical arrival time `tat` (if any), at `now`,
/// `n` permits of interval `interval` with tolerance `tolerance` (all in
/// microseconds). `Ok(new_tat)` when admitted, `Err(retry_after)` when not.
pub(crate) fn gcra(
    tat: Option<u64>,
    now: u64,
    interval: u64,
    tolerance: u64,
    n: u64,
) -> std::result::Result<u64, u64> {
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(n.saturating_mul(interval));
    let allow_at = new_tat.saturating_sub(tolerance.saturating_add(interval));
    if allow_at <= now {
        Ok(new_tat)
    } else {
        Err(allow_at - now)
    }
}

/// The in-process GCRA of the local fallback.
#[derive(Debug)]
struct LocalGcra {
    quota: Quota,
    epoch: Instant,
    tat: Mutex<Option<u64>>,
}

impl LocalGcra {
    fn new(quota: Quota) -> LocalGcra {
        LocalGcra {
            quota,
            epoch: Instant::now(),
            tat: Mutex::new(None),
        }
    }

    fn try_acquire(&self, n: u32) -> Result<Acquire> {
        check_permits(&self.quota, n, "the local fallback quota")?;
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut tat = lock(&self.tat);
        match gcra(
            *tat,
            now,
            self.quota.interval_us(),
            self.quota.tolerance_us(),
            u64::from(n),
        ) {
            Ok(new_tat) => {
                *tat = Some(new_tat);
                Ok(Acquire::Admitted(Permit {
                    permits: n,
                    at: SystemTime::now(),
                    decided_by: Mode::Local,
                }))
            }
            Err(retry_after) => Ok(Acquire::Limited {
                retry_after: Duration::from_micros(retry_after),
            }),
        }
    }
}

fn check_permits(quota: &Quota, n: u32, what: &str) -> Result<()> {
    if n == 0 || n > quota.max_permits() {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "cannot acquire {n} permits at once: {what} ({} per {:?}, burst {}) admits 1 to {} \
                 (burst + 1) in one acquire",
                quota.limit,
                quota.period,
                quota.burst,
                quota.max_permits()
            ),
        ));
    }
    Ok(())
}

/// Checks a limiter's name: 1 to 64 characters of `a-z`, `0-9`, `_`, `-`,
/// `.`, `:` (it is the key's hash tag, which must not hold `{` or `}`).
fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("invalid rate limiter name {name:?}: 1 to 64 characters of a-z, 0-9, '_', '-', '.', ':'"),
        ))
    }
}

/// A rate limiter shared by every instance through Redis. Cheap to clone (the
/// clones are one limiter); `Send + Sync`. See the [module docs](self).
///
/// # Examples
///
/// ```no_run
/// use tickbus::{Bus, RedisConfig};
/// use tickbus::rate::Quota;
///
/// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
/// let llm = bus.rate_limiter("openrouter", Quota::per_minute(60).with_burst(10))?;
/// for prompt in ["a", "b"] {
///     llm.acquire_blocking(1)?;
///     println!("call the model with {prompt}");
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    key: String,
    quota: Quota,
    options: RateLimiterOptions,
    fallback: Option<LocalGcra>,
    connection: Connection,
    runtime: tokio::runtime::Handle,
    mode: AtomicU8,
    /// Until when (local clock) acquires of at least that many permits are
    /// known to be refused: the last refusal of the shared limiter.
    known_limited: Mutex<Option<(Instant, u32)>>,
    limited_locally: AtomicU64,
    admitted: AtomicU64,
    limited: AtomicU64,
    local_admitted: AtomicU64,
    local_limited: AtomicU64,
    unavailable: AtomicU64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("key", &self.inner.key)
            .field("quota", &self.inner.quota)
            .field("options", &self.inner.options)
            .field("mode", &self.mode())
            .finish()
    }
}

impl RateLimiter {
    /// A limiter on `<prefix>:rate:{<name>}` deciding on `connection` (its
    /// commands run on `runtime`). No round trip.
    pub(crate) fn new(
        prefix: &str,
        name: &str,
        quota: Quota,
        options: RateLimiterOptions,
        (connection, runtime): (Connection, tokio::runtime::Handle),
    ) -> Result<RateLimiter> {
        validate_name(name)?;
        quota.validate(&format!("rate limiter {name}"))?;
        let fallback = match options.on_redis_down {
            OnRedisDown::FailClosed => None,
            OnRedisDown::Local(local) => {
                local.validate(&format!("rate limiter {name}, local fallback"))?;
                Some(LocalGcra::new(local))
            }
        };
        Ok(RateLimiter {
            inner: Arc::new(Inner {
                name: name.to_string(),
                key: keys::rate(prefix, name),
                quota,
                options,
                fallback,
                connection,
                runtime,
                mode: AtomicU8::new(SHARED),
                known_limited: Mutex::new(None),
                limited_locally: AtomicU64::new(0),
                admitted: AtomicU64::new(0),
                limited: AtomicU64::new(0),
                local_admitted: AtomicU64::new(0),
                local_limited: AtomicU64::new(0),
                unavailable: AtomicU64::new(0),
            }),
        })
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The shared quota.
    pub fn quota(&self) -> Quota {
        self.inner.quota
    }

    /// Who decided the last acquire: [`Mode::Shared`] while Redis answers;
    /// when it does not, [`Mode::Local`] or [`Mode::FailingClosed`] by
    /// [`OnRedisDown`].
    pub fn mode(&self) -> Mode {
        match self.inner.mode.load(Ordering::Relaxed) {
            LOCAL => Mode::Local,
            FAILING_CLOSED => Mode::FailingClosed,
            _ => Mode::Shared,
        }
    }

    /// The limiter's counters and mode.
    pub fn stats(&self) -> RateLimiterStats {
        let inner = &self.inner;
        RateLimiterStats {
            mode: self.mode(),
            admitted: inner.admitted.load(Ordering::Relaxed),
            limited: inner.limited.load(Ordering::Relaxed),
            limited_without_round_trip: inner.limited_locally.load(Ordering::Relaxed),
            local_admitted: inner.local_admitted.load(Ordering::Relaxed),
            local_limited: inner.local_limited.load(Ordering::Relaxed),
            unavailable: inner.unavailable.load(Ordering::Relaxed),
        }
    }

    /// Asks for `n` permits once (one round trip): admitted, or how long to
    /// wait. Does not wait. Runs on any executor.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for `n` of 0 or above
    /// [`Quota::max_permits`] (it could never be admitted);
    /// [`ErrorKind::Unavailable`] (or `Timeout`) when Redis is away and the
    /// limiter fails closed; [`ErrorKind::Redis`] when the key holds something
    /// else; [`ErrorKind::Closed`] after the bus shut down.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use tickbus::{Bus, RedisConfig};
    /// use tickbus::rate::{Acquire, Quota};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build_async().await?;
    /// let orders = bus.rate_limiter("binance.orders", Quota::per_second(10))?;
    /// if let Acquire::Limited { retry_after } = orders.try_acquire(1).await? {
    ///     println!("skip this signal; next order in {retry_after:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn try_acquire(
        &self,
        n: u32,
    ) -> impl std::future::Future<Output = Result<Acquire>> + Send + 'static {
        let this = self.clone();
        let job = self.start(n);
        async move {
            match job? {
                Step::Known(retry_after) => Ok(Acquire::Limited { retry_after }),
                Step::Down => this.settle(n, None),
                Step::Sent(rx, sent) => {
                    let reply = rx.await.unwrap_or_else(|_| Err(closed()));
                    this.settle(n, Some((reply, sent)))
                }
            }
        }
    }

    /// As [`try_acquire`](RateLimiter::try_acquire), blocking the calling
    /// thread for the round trip (not for use on an async executor's thread).
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](RateLimiter::try_acquire).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use tickbus::{Bus, RedisConfig};
    /// use tickbus::rate::Quota;
    ///
    /// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
    /// let orders = bus.rate_limiter("binance.orders", Quota::per_second(10))?;
    /// let _answer = orders.try_acquire_blocking(1)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_acquire_blocking(&self, n: u32) -> Result<Acquire> {
        match self.start(n)? {
            Step::Known(retry_after) => Ok(Acquire::Limited { retry_after }),
            Step::Down => self.settle(n, None),
            Step::Sent(rx, sent) => {
                let reply = rx.blocking_recv().unwrap_or_else(|_| Err(closed()));
                self.settle(n, Some((reply, sent)))
            }
        }
    }

    /// Waits until `n` permits are admitted (asking again after each
    /// retry-after). Runs on any executor. Cancel-safe: dropping the future
    /// stops asking; permits admitted by a round trip in flight when it was
    /// dropped are spent (never more than the quota).
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](RateLimiter::try_acquire): an error ends the wait.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use tickbus::{Bus, RedisConfig};
    /// use tickbus::rate::Quota;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build_async().await?;
    /// let llm = bus.rate_limiter("openrouter", Quota::per_minute(60).with_burst(4))?;
    /// let permit = llm.acquire(5).await?; // a batch of 5 requests counts 5
    /// assert_eq!(permit.permits, 5);
    /// # Ok(()) }
    /// ```
    pub fn acquire(
        &self,
        n: u32,
    ) -> impl std::future::Future<Output = Result<Permit>> + Send + 'static {
        let this = self.clone();
        async move {
            loop {
                match this.try_acquire(n).await? {
                    Acquire::Admitted(permit) => return Ok(permit),
                    Acquire::Limited { retry_after } => crate::io::sleep(retry_after).await,
                }
            }
        }
    }

    /// As [`acquire`](RateLimiter::acquire), blocking the calling thread.
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](RateLimiter::try_acquire).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use tickbus::{Bus, RedisConfig};
    /// use tickbus::rate::Quota;
    ///
    /// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
    /// let orders = bus.rate_limiter("binance.orders", Quota::per_second(10))?;
    /// orders.acquire_blocking(1)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn acquire_blocking(&self, n: u32) -> Result<Permit> {
        loop {
            match self.try_acquire_blocking(n)? {
                Acquire::Admitted(permit) => return Ok(permit),
                Acquire::Limited { retry_after } => std::thread::sleep(retry_after),
            }
        }
    }

    /// Checks `n`, answers from what the last refusal proved if it can, and
    /// else sends the script to the writer's I/O thread (not when the
    /// connection is known to be down).
    fn start(&self, n: u32) -> Result<Step> {
        let inner = &self.inner;
        check_permits(&inner.quota, n, &format!("rate limiter {}", inner.name))?;
        if !inner.connection.is_connected() {
            return Ok(Step::Down);
        }
        let sent = Instant::now();
        if let Some((until, fewest)) = *lock(&inner.known_limited) {
            if n >= fewest && sent < until {
                inner.limited_locally.fetch_add(1, Ordering::Relaxed);
                return Ok(Step::Known(until - sent));
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = Arc::clone(inner);
        inner.runtime.spawn(async move {
            let reply = this
                .connection
                .gcra(
                    &this.key,
                    this.quota.interval_us(),
                    this.quota.tolerance_us(),
                    u64::from(n),
                )
                .await;
            let _ = tx.send(reply);
        });
        Ok(Step::Sent(rx, sent))
    }

    /// Turns the script's reply (`None`: not sent, the connection is down)
    /// into the answer, falling back by [`OnRedisDown`] when Redis is away.
    fn settle(&self, n: u32, reply: Option<(Result<GcraReply>, Instant)>) -> Result<Acquire> {
        let inner = &self.inner;
        let error = match reply {
            Some((Ok(GcraReply::Admitted { now_us }), _)) => {
                inner.mode.store(SHARED, Ordering::Relaxed);
                inner.admitted.fetch_add(1, Ordering::Relaxed);
                return Ok(Acquire::Admitted(Permit {
                    permits: n,
                    at: UNIX_EPOCH + Duration::from_micros(now_us),
                    decided_by: Mode::Shared,
                }));
            }
            Some((Ok(GcraReply::Limited { retry_after_us, .. }), sent)) => {
                inner.mode.store(SHARED, Ordering::Relaxed);
                inner.limited.fetch_add(1, Ordering::Relaxed);
                let retry_after = Duration::from_micros(retry_after_us);
                // The script ran after `sent` and the TAT only grows: no
                // acquire of `n` or more permits is admitted before this.
                *lock(&inner.known_limited) = Some((sent + retry_after, n));
                return Ok(Acquire::Limited { retry_after });
            }
            Some((Err(error), _))
                if !matches!(error.kind(), ErrorKind::Unavailable | ErrorKind::Timeout) =>
            {
                return Err(error);
            }
            Some((Err(error), _)) => Some(error),
            None => None,
        };
        match &inner.fallback {
            Some(local) => {
                inner.mode.store(LOCAL, Ordering::Relaxed);
                let answer = local.try_acquire(n)?;
                let counter = match answer {
                    Acquire::Admitted(_) => &inner.local_admitted,
                    Acquire::Limited { .. } => &inner.local_limited,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(answer)
            }
            None => {
                inner.mode.store(FAILING_CLOSED, Ordering::Relaxed);
                inner.unavailable.fetch_add(1, Ordering::Relaxed);
                let kind = error.as_ref().map_or(ErrorKind::Unavailable, Error::kind);
                let why = error
                    .as_ref()
                    .map_or_else(|| "not connected".to_string(), ToString::to_string);
                let message = format!(
                    "rate limiter {}: Redis is unavailable and the limiter fails closed \
                     (OnRedisDown::FailClosed): {why}",
                    inner.name
                );
                let failed = Error::new(kind, message);
                Err(match error {
                    Some(source) => failed.with_source(source),
                    None => failed,
                })
            }
        }
    }
}

/// How an acquire goes on after its checks.
enum Step {
    /// A refusal seen earlier proves this one: no round trip.
    Known(Duration),
    /// The connection is down: no round trip.
    Down,
    /// The script is on its way (sent at that instant).
    Sent(tokio::sync::oneshot::Receiver<Result<GcraReply>>, Instant),
}

fn closed() -> Error {
    Error::new(ErrorKind::Closed, "the bus has shut down")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 20_000; // 50/s

    #[test]
    fn burst_plus_one_from_idle_then_a_retry_after_of_one_interval() {
        let tolerance = 10 * T;
        let mut tat = None;
        for _ in 0..11 {
            tat = Some(gcra(tat, 1_000, T, tolerance, 1).expect("within the burst"));
        }
        assert_eq!(gcra(tat, 1_000, T, tolerance, 1), Err(T));
        // One interval later, exactly one more.
        let later = 1_000 + T;
        let tat = Some(gcra(tat, later, T, tolerance, 1).expect("one interval later"));
        assert_eq!(gcra(tat, later, T, tolerance, 1), Err(T));
    }

    #[test]
    fn weighted_permits_count_n() {
        let tolerance = 4 * T;
        let tat = gcra(None, 0, T, tolerance, 5).expect("burst + 1 at once");
        assert_eq!(tat, 5 * T);
        assert_eq!(gcra(Some(tat), 0, T, tolerance, 1), Err(T));
        assert_eq!(gcra(Some(tat), 2 * T, T, tolerance, 3), Err(T));
        assert_eq!(gcra(Some(tat), 3 * T, T, tolerance, 3), Ok(8 * T));
        // More than burst + 1 never fits, even from idle.
        assert!(gcra(None, 0, T, tolerance, 6).is_err());
    }

    #[test]
    fn a_stale_tat_counts_from_now() {
        assert_eq!(gcra(Some(5), 1_000_000, T, 0, 1), Ok(1_000_000 + T));
    }

    /// Greedy acquirers at every microsecond-step instant: any window of one
    /// period admits at most `limit + burst`.
    #[test]
    fn no_window_of_one_period_admits_more_than_limit_plus_burst() {
        for (limit, burst, step) in [
            (50_u64, 10_u64, 1_000_u64),
            (7, 0, 333),
            (3, 2, 17),
            (100, 100, 5_000),
        ] {
            let period: u64 = 1_000_000;
            let interval = period.div_ceil(limit);
            let mut tat = None;
            let mut admitted = Vec::new();
            let mut now = 0;
            while now < 5 * period {
                while let Ok(new_tat) = gcra(tat, now, interval, burst * interval, 1) {
                    tat = Some(new_tat);
                    admitted.push(now);
                }
                now += step;
            }
            for (i, start) in admitted.iter().enumerate() {
                let within = admitted[i..]
                    .iter()
                    .take_while(|at| **at < start + period)
                    .count();
                assert!(
                    within as u64 <= limit + burst,
                    "{within} in one window ({limit}/s, burst {burst})"
                );
            }
            assert!(
                admitted.len() as u64 >= 5 * limit,
                "it admits: {}",
                admitted.len()
            );
        }
    }

    #[test]
    fn quotas_and_their_interval() {
        assert_eq!(Quota::per_second(3).interval_us(), 333_334);
        assert_eq!(Quota::per_minute(60).interval_us(), 1_000_000);
        assert_eq!(Quota::per_second(10).with_burst(5).tolerance_us(), 500_000);
        assert_eq!(
            Quota::per_second(0).validate("q").unwrap_err().kind(),
            ErrorKind::InvalidConfig
        );
        assert!(Quota::per_second(1).validate("q").is_ok());
    }

    #[test]
    fn the_local_limiter_admits_burst_plus_one_then_limits() {
        let local = LocalGcra::new(Quota::per_minute(60).with_burst(2));
        for _ in 0..3 {
            assert!(matches!(
                local.try_acquire(1).unwrap(),
                Acquire::Admitted(_)
            ));
        }
        match local.try_acquire(1).unwrap() {
            Acquire::Limited { retry_after } => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            local.try_acquire(4).unwrap_err().kind(),
            ErrorKind::InvalidConfig
        );
        assert_eq!(
            local.try_acquire(0).unwrap_err().kind(),
            ErrorKind::InvalidConfig
        );
    }

    #[test]
    fn names() {
        assert!(validate_name("binance.orders").is_ok());
        assert!(validate_name("binance:orders").is_ok());
        for bad in ["", "A", "a{b}", "a b", &"x".repeat(65)] {
            assert_eq!(
                validate_name(bad).unwrap_err().kind(),
                ErrorKind::InvalidConfig
            );
        }
    }
}
