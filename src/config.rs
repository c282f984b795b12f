//! Plain-data configuration with documented defaults. Nothing here performs I/O.

#[cfg(feature = "redis")]
use std::fmt;
#[cfg(feature = "redis")]
use std::path::PathBuf;
#[cfg(feature = "redis")]
use std::time::Duration;

/// What happens when a subscriber falls a whole ring behind its publishers.
///
/// Chosen per subscription: a risk monitor that must see every fill uses
/// `Backpressure`; a dashboard that only wants the latest state uses `Lag`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SlowPolicy {
    /// The ring overwrites the oldest events; the subscriber's next receive reports
    /// [`Lagged(n_missed)`](crate::RecvError::Lagged) and it carries on from the
    /// oldest event still held. Publishers never wait for it. The default.
    #[default]
    Lag,
    /// Publishers wait (`publish`) or get their event back (`try_publish`) rather
    /// than overwrite an event this subscriber has not read. Nothing is missed; a
    /// stalled subscriber stalls the topic, so drop it when it is done.
    Backpressure,
}

/// Options of one subscription.
///
/// # Examples
///
/// ```
/// use tickbus::{SlowPolicy, SubscribeOptions};
///
/// let must_see_everything = SubscribeOptions::with_policy(SlowPolicy::Backpressure);
/// let park_at_once = SubscribeOptions { async_spin_polls: 0, ..Default::default() };
/// assert_eq!(SubscribeOptions::default().policy, SlowPolicy::Lag);
/// # let _ = (must_see_everything, park_at_once);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// What happens when this subscriber falls behind. Default [`SlowPolicy::Lag`].
    pub policy: SlowPolicy,
    /// How many times an async receive (`recv().await`, the `Stream`) looks again,
    /// pausing the core between looks, before it registers its waker and returns
    /// `Pending`. Default 200 (a few microseconds).
    ///
    /// Waking a parked task costs the kernel a thread wake-up (~25-30 µs on the
    /// development VM); an event that arrives within the spin is received in
    /// hundreds of nanoseconds instead. The price is that the executor thread is
    /// busy for the spin after each event. Set 0 to park at once, as
    /// `tokio::sync::broadcast` does.
    pub async_spin_polls: u32,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            policy: SlowPolicy::Lag,
            async_spin_polls: 200,
        }
    }
}

impl SubscribeOptions {
    /// Options with this slow policy and the other defaults.
    pub const fn with_policy(policy: SlowPolicy) -> Self {
        SubscribeOptions {
            policy,
            async_spin_polls: 200,
        }
    }
}

/// Options of one topic, fixed when the topic is first created on a bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicOptions {
    /// Ring capacity in events; rounded up to a power of two. Default 4 096.
    /// Memory is `capacity × (size_of::<T>() + 24)` bytes rounded up to a multiple
    /// of 64 per slot (slots are cache-line aligned), allocated at creation.
    pub capacity: usize,
    /// Most backpressure subscribers the topic accepts at once. Default 32, at most
    /// [`TopicOptions::MAX_BACKPRESSURE_SUBSCRIBERS`].
    pub max_backpressure_subscribers: usize,
    /// One publisher at a time: events come from the topic's
    /// [`Publisher`](crate::Publisher) (see [`Topic::publisher`](crate::Topic::publisher)),
    /// and the ring drops every atomic read-modify-write and fence from the publish
    /// and receive paths (the single-producer ring of the LMAX Disruptor). While
    /// no `Publisher` is held, [`Topic::publish`](crate::Topic::publish) still
    /// works (it takes the role for one event); while one is held, it is refused
    /// with [`ErrorKind::ExclusivePublisher`](crate::ErrorKind::ExclusivePublisher).
    /// Local topics only: a durable topic's ring also takes other instances'
    /// events. Default `false`.
    pub exclusive_publisher: bool,
}

impl TopicOptions {
    /// The largest ring accepted, in events (2^24).
    pub const MAX_CAPACITY: usize = 1 << 24;
    /// The most backpressure subscribers a topic may allow (each is a cache-padded
    /// gate that a blocked publisher scans).
    pub const MAX_BACKPRESSURE_SUBSCRIBERS: usize = 1024;

    /// Checks the options are in range.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) naming the
    /// field and its range.
    ///
    /// # Examples
    ///
    /// ```
    /// use tickbus::TopicOptions;
    ///
    /// assert!(TopicOptions::default().validate().is_ok());
    /// let err = TopicOptions { capacity: 0, ..Default::default() }.validate().unwrap_err();
    /// assert!(err.to_string().contains("capacity 0"));
    /// ```
    pub fn validate(&self) -> crate::Result<()> {
        let invalid =
            |message: String| Err(crate::Error::new(crate::ErrorKind::InvalidConfig, message));
        if self.capacity == 0 || self.capacity > Self::MAX_CAPACITY {
            return invalid(format!(
                "TopicOptions::capacity {} is outside 1..={}",
                self.capacity,
                Self::MAX_CAPACITY
            ));
        }
        if self.max_backpressure_subscribers > Self::MAX_BACKPRESSURE_SUBSCRIBERS {
            return invalid(format!(
                "TopicOptions::max_backpressure_subscribers {} is above {}",
                self.max_backpressure_subscribers,
                Self::MAX_BACKPRESSURE_SUBSCRIBERS
            ));
        }
        Ok(())
    }
}

impl Default for TopicOptions {
    fn default() -> Self {
        TopicOptions {
            capacity: 4096,
            max_backpressure_subscribers: 32,
            exclusive_publisher: false,
        }
    }
}

/// How to reach Redis, and how the live bus uses it (live mode, feature `redis`).
///
/// Plain data: building it performs no I/O; [`BusBuilder::build`](crate::BusBuilder::build)
/// connects and checks. `Debug` never prints the password.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tickbus::{OutboxFull, RedisConfig};
///
/// let mut config = RedisConfig::from_url("redis://trader:s3cret@10.0.0.5:6380/0")?;
/// config.outbox_full = OutboxFull::Error;
/// config.read_block = Duration::from_millis(500);
/// assert!(!format!("{config:?}").contains("s3cret"));
/// assert_eq!(config.redacted_url(), "redis://trader:***@10.0.0.5:6380/0");
/// # Ok::<(), tickbus::Error>(())
/// ```
#[cfg(feature = "redis")]
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    url: String,
    /// First part of every key tickbus touches. Default `"tickbus"`: streams are
    /// `tickbus:stream:{<topic>}`. Must not contain `{`, `}`, spaces or `*?[]`.
    pub key_prefix: String,
    /// Most durable events waiting for Redis (all topics together). Default 65 536.
    pub outbox_capacity: usize,
    /// What a publish does when the outbox is full. Default [`OutboxFull::Wait`].
    pub outbox_full: OutboxFull,
    /// Most entries written in one pipeline. Default 512.
    pub write_batch: usize,
    /// Append through a short Lua script (`EVAL`) that runs the `XADD`s of up to
    /// 128 entries of one stream, instead of one `XADD` command per entry. The
    /// entries, their order and their ids are the same; the writer spends about
    /// half as much per entry (see `docs/benchmarks.md`). Default `true`; turn it
    /// off where `EVAL` is not allowed (an ACL without `+eval`, some managed
    /// services).
    pub append_script: bool,
    /// Most entries read per `XREAD`. Default 1 000.
    pub read_count: usize,
    /// Server-side `BLOCK` of the cross-instance reader. Default 1 s. Kept shorter
    /// than [`command_timeout`](RedisConfig::command_timeout).
    pub read_block: Duration,
    /// How long a command may take before it counts as failed (its outcome is then
    /// unknown, and the outbox checks the stream before writing again). Default 5 s.
    pub command_timeout: Duration,
    /// Time allowed to connect (TCP, TLS and `AUTH`) in `build`. Default 5 s.
    pub connect_timeout: Duration,
    /// First delay between reconnect attempts; doubles up to
    /// [`reconnect_max`](RedisConfig::reconnect_max), plus up to 20 % random jitter.
    /// Default 50 ms.
    pub reconnect_min: Duration,
    /// Longest delay between reconnect attempts. Default 2 s.
    pub reconnect_max: Duration,
    /// Event ids remembered per topic to recognise duplicate entries (an `XADD`
    /// re-sent after a lost reply). Default 16 384.
    pub dedup_window: usize,
    /// Where the cross-instance reader of each durable topic starts. Default
    /// [`StartAt::New`](crate::StartAt::New): events written after the topic was created on this
    /// bus. [`StartAt::Resume`](crate::StartAt::Resume): after the last entry this instance (same
    /// [`InstanceId`](crate::InstanceId)) delivered before it stopped, kept in
    /// `<prefix>:cursor:{<topic>}` (`New` the first time; give the bus a fixed
    /// instance id). `Beginning`, `After`, `At` and `Time`: local subscribers
    /// first receive what other instances wrote since then.
    pub remote_start: crate::event::StartAt,
    /// How long [`Bus::shutdown`](crate::Bus::shutdown) waits for the outbox to
    /// drain. Default 5 s.
    pub shutdown_timeout: Duration,
    /// Certificates of a `rediss://` connection: a private CA, a client
    /// certificate (mutual TLS), the name to verify. Default: from the
    /// environment ([`TlsOptions::ENV_VARS`]), else the system's roots and the
    /// URL's host. TLS itself is on exactly when the URL is `rediss://`.
    pub tls: TlsOptions,
}

/// The certificates of a `rediss://` connection (live mode, feature `redis`).
///
/// TLS is on exactly when the URL's scheme is `rediss://`; these options say
/// whom to trust and who the client is. Plain data: the files are read by
/// [`BusBuilder::build`](crate::BusBuilder::build), which fails (and never
/// falls back to plaintext) when they cannot be read, when the server's
/// certificate is not trusted, has expired or does not carry the expected
/// name, or when the server does not speak TLS. The TLS library is rustls
/// (with ring): no OpenSSL.
///
/// [`RedisConfig::from_url`] and [`RedisConfig::from_env`] start from the
/// environment variables `TICKBUS_REDIS_CA_FILE`, `TICKBUS_REDIS_CERT_FILE`,
/// `TICKBUS_REDIS_KEY_FILE` and `TICKBUS_REDIS_TLS_SERVER_NAME`, so a program
/// (the examples, the `tickbus` tool) gets TLS without code changes.
///
/// # Examples
///
/// ```no_run
/// use tickbus::{Bus, RedisConfig, TlsOptions};
///
/// let mut config = RedisConfig::from_url("rediss://10.0.0.5:6380")?;
/// config.tls = TlsOptions {
///     // Trust only the private CA (instead of the system's roots).
///     ca_file: Some("/etc/tickbus/ca.pem".into()),
///     // Mutual TLS: the server checks this certificate (`tls-auth-clients yes`).
///     cert_file: Some("/etc/tickbus/client.pem".into()),
///     key_file: Some("/etc/tickbus/client.key".into()),
///     // The certificate names `redis.internal`, not the IP address connected to.
///     server_name: Some("redis.internal".into()),
/// };
/// let bus = Bus::builder().redis(config).build()?;
/// # Ok::<(), tickbus::Error>(())
/// ```
#[cfg(feature = "redis")]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificate(s) that signed the server's certificate
    /// (a private CA). They replace the system's roots. Default `None`: the
    /// system's roots. Environment: `TICKBUS_REDIS_CA_FILE`.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client's certificate (chain), for servers that ask for
    /// one (`tls-auth-clients yes`). Needs [`key_file`](TlsOptions::key_file).
    /// Default `None`: no client certificate. Environment:
    /// `TICKBUS_REDIS_CERT_FILE`.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (PKCS #8, PKCS #1 or
    /// SEC1). Its contents never appear in errors or logs. Default `None`.
    /// Environment: `TICKBUS_REDIS_KEY_FILE`.
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry (a DNS name or an IP
    /// address). Default `None`: the URL's host. Environment:
    /// `TICKBUS_REDIS_TLS_SERVER_NAME`.
    pub server_name: Option<String>,
}

#[cfg(feature = "redis")]
impl TlsOptions {
    /// The environment variables read by [`from_env`](TlsOptions::from_env):
    /// the CA file, the client certificate, its key and the server name.
    pub const ENV_VARS: [&'static str; 4] = [
        "TICKBUS_REDIS_CA_FILE",
        "TICKBUS_REDIS_CERT_FILE",
        "TICKBUS_REDIS_KEY_FILE",
        "TICKBUS_REDIS_TLS_SERVER_NAME",
    ];

    /// The options named by the environment variables
    /// [`ENV_VARS`](TlsOptions::ENV_VARS) (an empty variable counts as unset).
    /// Reads no file.
    pub fn from_env() -> TlsOptions {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// The options named by `lookup(variable)` (the environment, or a test's map).
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<std::ffi::OsString>) -> TlsOptions {
        let [ca, cert, key, name] = Self::ENV_VARS;
        let value = |var: &str| lookup(var).filter(|value| !value.is_empty());
        TlsOptions {
            ca_file: value(ca).map(PathBuf::from),
            cert_file: value(cert).map(PathBuf::from),
            key_file: value(key).map(PathBuf::from),
            server_name: value(name).map(|name| name.to_string_lossy().into_owned()),
        }
    }

    /// Whether any option is set.
    pub fn is_set(&self) -> bool {
        *self != TlsOptions::default()
    }
}

#[cfg(feature = "redis")]
impl RedisConfig {
    /// The environment variables read by [`from_env`](RedisConfig::from_env), in order.
    pub const ENV_VARS: [&'static str; 2] = ["TICKBUS_REDIS_URL", "REDIS_URL"];

    /// A configuration with the defaults and this URL: `redis://[user[:password]@]host[:port][/db]`,
    /// or `rediss://` for TLS. Checks the form only; nothing connects.
    ///
    /// For a `rediss://` URL the [TLS options](RedisConfig::tls) come from the
    /// environment ([`TlsOptions::from_env`]; the files are read by `build`).
    /// A `redis://` URL ignores those variables: they say how to speak TLS,
    /// not whether, so a process that talks to two servers is not refused for
    /// the plaintext one.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) when the URL is
    /// not a `redis://` or `rediss://` URL with a host.
    pub fn from_url(url: &str) -> crate::Result<Self> {
        let rest = url
            .strip_prefix("redis://")
            .or_else(|| url.strip_prefix("rediss://"));
        let host = rest.map(|rest| {
            let authority = rest.split('/').next().unwrap_or_default();
            authority.rsplit('@').next().unwrap_or_default().to_string()
        });
        match host {
            Some(host) if !host.is_empty() && !host.starts_with(':') => Ok(RedisConfig {
                url: url.to_string(),
                tls: if url.starts_with("rediss://") {
                    TlsOptions::from_env()
                } else {
                    TlsOptions::default()
                },
                ..RedisConfig::defaults()
            }),
            _ => Err(crate::Error::new(
                crate::ErrorKind::InvalidConfig,
                format!(
                    "not a Redis URL (redis://host:port or rediss://host:port): {}",
                    redact_url(url)
                ),
            )),
        }
    }

    /// The URL from `TICKBUS_REDIS_URL`, else `REDIS_URL`; `Ok(None)` when neither is set.
    /// The TLS options from [`TlsOptions::ENV_VARS`], as in [`from_url`](RedisConfig::from_url).
    ///
    /// # Errors
    ///
    /// As [`from_url`](RedisConfig::from_url) for a malformed URL.
    pub fn from_env() -> crate::Result<Option<Self>> {
        for var in Self::ENV_VARS {
            if let Ok(url) = std::env::var(var) {
                if !url.is_empty() {
                    return Self::from_url(&url).map(Some);
                }
            }
        }
        Ok(None)
    }

    fn defaults() -> Self {
        RedisConfig {
            url: String::new(),
            key_prefix: "tickbus".to_string(),
            outbox_capacity: 65_536,
            outbox_full: OutboxFull::Wait,
            write_batch: 512,
            append_script: true,
            read_count: 1_000,
            read_block: Duration::from_secs(1),
            command_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            dedup_window: 16_384,
            remote_start: crate::event::StartAt::New,
            shutdown_timeout: Duration::from_secs(5),
            tls: TlsOptions::default(),
        }
    }

    /// Whether the URL asks for TLS (`rediss://`).
    pub fn uses_tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }

    /// The URL, password included. Never log it: use
    /// [`redacted_url`](RedisConfig::redacted_url).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Checks the values are in range.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) naming the field.
    pub fn validate(&self) -> crate::Result<()> {
        let invalid = |message: &str| {
            Err(crate::Error::new(
                crate::ErrorKind::InvalidConfig,
                format!("RedisConfig::{message}"),
            ))
        };
        let bad_prefix = self.key_prefix.is_empty()
            || self.key_prefix.len() > 64
            || self
                .key_prefix
                .chars()
                .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.')));
        if bad_prefix {
            return invalid("key_prefix must be 1 to 64 of a-z A-Z 0-9 : _ - .");
        }
        if self.outbox_capacity == 0 || self.write_batch == 0 || self.read_count == 0 {
            return invalid("outbox_capacity, write_batch and read_count must be at least 1");
        }
        if self.read_block.is_zero() || self.read_block >= self.command_timeout {
            return invalid("read_block must be above 0 and below command_timeout");
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return invalid("reconnect_min must be above 0 and at most reconnect_max");
        }
        if self.tls.is_set() && !self.uses_tls() {
            // Never a plaintext connection where certificates were asked for.
            return invalid(
                "tls is set (a CA, client certificate or server name, perhaps from \
                 TICKBUS_REDIS_* variables) but the URL is redis:// (plaintext): use rediss://",
            );
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return invalid("tls.cert_file and tls.key_file must be set together (mutual TLS)");
        }
        Ok(())
    }
}

#[cfg(feature = "redis")]
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("key_prefix", &self.key_prefix)
            .field("outbox_capacity", &self.outbox_capacity)
            .field("outbox_full", &self.outbox_full)
            .field("write_batch", &self.write_batch)
            .field("append_script", &self.append_script)
            .field("read_block", &self.read_block)
            .field("remote_start", &self.remote_start)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// `url` with the password (if any) replaced by `***`.
#[cfg(feature = "redis")]
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') || user.is_empty() {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                // `redis://password@host` is how some clients pass a lone password.
                format!("{scheme}://***@{host}{path}")
            }
        }
        None => url.to_string(),
    }
}

/// What a durable publish does when the outbox is full (Redis down or behind).
#[cfg(feature = "redis")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OutboxFull {
    /// The publisher waits until the writer makes room (backpressure).
    #[default]
    Wait,
    /// The publish fails at once with [`PublishError::Backpressure`](crate::PublishError),
    /// handing the event back. Nothing was delivered locally.
    Error,
}

/// How long a durable topic's stream keeps entries (trimmed approximately, as
/// `MAXLEN ~` and `MINID ~` do: Redis trims whole nodes, so a few more entries stay).
#[cfg(feature = "redis")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Retention {
    /// Keep about this many of the newest entries (`XADD … MAXLEN ~ n`). `None`: no limit.
    pub max_len: Option<u64>,
    /// Keep entries younger than this (`XTRIM … MINID ~ <now - age>`, at most once a
    /// second per topic). `None`: no limit.
    pub max_age: Option<Duration>,
}

/// When a durable publish counts as done (when its [`Receipt`](crate::Receipt) resolves).
#[cfg(feature = "redis")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Redis has the entry in memory (and on disk as its `appendfsync` allows).
    #[default]
    Written,
    /// Redis has also fsynced its AOF (`WAITAOF 1 0`, Redis ≥ 7.2 with
    /// `appendonly yes`, sent on the connection that wrote the entry).
    AofFsynced,
}

/// Options of a durable topic ([`LiveBus::durable_topic`](crate::LiveBus::durable_topic)).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tickbus::{DurableOptions, Retention};
///
/// let fills = DurableOptions {
///     retention: Retention { max_len: Some(1_000_000), max_age: Some(Duration::from_secs(86_400)) },
///     ..Default::default()
/// };
/// assert!(fills.receive_remote);
/// ```
#[cfg(feature = "redis")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurableOptions {
    /// The local ring. Default: the bus's topic options.
    pub local: Option<TopicOptions>,
    /// How long the stream keeps entries. Default: no trimming.
    pub retention: Retention,
    /// When a receipt resolves. Default [`Durability::Written`].
    pub durability: Durability,
    /// Deliver events other instances write to this topic to local subscribers.
    /// Default `true`; a publisher-only process can save the reads.
    pub receive_remote: bool,
    /// Move this topic's due scheduled events
    /// ([`DurableTopic::publish_at`](crate::DurableTopic::publish_at)) into its
    /// stream from the start, looking for new ones at least this often. Set it
    /// on the instances that should deliver jobs scheduled by others (workers):
    /// any number may, each job is moved once. Default `None`: this instance
    /// moves them only once it has scheduled one itself (then it looks every
    /// second). Either way a job is never moved before it is due by the Redis
    /// server's clock.
    pub delayed_poll: Option<Duration>,
}

#[cfg(feature = "redis")]
impl Default for DurableOptions {
    fn default() -> Self {
        DurableOptions {
            local: None,
            retention: Retention::default(),
            durability: Durability::Written,
            receive_remote: true,
            delayed_poll: None,
        }
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use std::collections::HashMap;
    use std::ffi::OsString;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), OsString::from(value)))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn tls_options_come_from_the_variables_and_empty_ones_count_as_unset() {
        let tls = TlsOptions::from_lookup(lookup(&[
            ("TICKBUS_REDIS_CA_FILE", "/etc/ca.pem"),
            ("TICKBUS_REDIS_CERT_FILE", "/etc/client.pem"),
            ("TICKBUS_REDIS_KEY_FILE", "/etc/client.key"),
            ("TICKBUS_REDIS_TLS_SERVER_NAME", ""),
        ]));
        assert_eq!(tls.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(tls.cert_file, Some(PathBuf::from("/etc/client.pem")));
        assert_eq!(tls.key_file, Some(PathBuf::from("/etc/client.key")));
        assert_eq!(tls.server_name, None);
        assert!(!TlsOptions::from_lookup(lookup(&[])).is_set());
    }

    #[test]
    fn certificates_on_a_plaintext_url_or_half_a_key_pair_are_refused() {
        let mut config = RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            ..RedisConfig::defaults()
        };
        config.tls.ca_file = Some("/etc/ca.pem".into());
        let error = config.validate().unwrap_err();
        assert_eq!(error.kind(), crate::ErrorKind::InvalidConfig);
        assert!(error.to_string().contains("use rediss://"), "{error}");

        config.url = "rediss://127.0.0.1:6379".into();
        assert!(config.validate().is_ok());
        config.tls.cert_file = Some("/etc/client.pem".into());
        let error = config.validate().unwrap_err();
        assert!(error.to_string().contains("together"), "{error}");
        config.tls.key_file = Some("/etc/client.key".into());
        assert!(config.validate().is_ok());
        assert!(format!("{config:?}").contains("client.key"));
    }
}
