//! Private Redis servers for tests and benchmarks (feature `test-util`).
//!
//! [`RedisServer`] starts a `redis-server` process of its own on a free port of
//! 127.0.0.1, in a temporary directory, with no persistence unless asked for
//! (AOF, see [`RedisServerOptions::aof`]). It can be killed (`SIGKILL`),
//! restarted on the same port and directory (so AOF data survives), or shut
//! down gracefully; dropping it kills the process and removes the directory,
//! also when a test panics. Tests never touch a shared Redis (such as the one
//! at 127.0.0.1:6379): each gets a server nobody else knows about.
//!
//! [`FaultProxy`] sits between a client and such a server and injects network
//! faults: a half-open connection, lost replies, resets.
//!
//! The server binary is `redis-server` from `PATH` unless the environment
//! variable `TICKBUS_TEST_REDIS_SERVER` (or [`RedisServerOptions::binary`])
//! names another one, such as a `valkey-server`.
//!
//! ```
//! use tickbus::test_util::RedisServer;
//!
//! let server = RedisServer::start()?;
//! assert_eq!(server.cli(&["PING"])?, "PONG");
//! assert_ne!(server.port(), 6379);
//! println!("connect to {}", server.url());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod launch;
mod proxy;
mod resp;

pub use proxy::FaultProxy;

use launch::{free_port, launch, Failure};
use resp::{bulk_string, encode_command, Replies};

/// Environment variable naming the server binary (default `redis-server`).
const SERVER_ENV: &str = "TICKBUS_TEST_REDIS_SERVER";
/// Environment variable naming the `redis-cli` binary used by [`RedisServer::cli`].
const CLI_ENV: &str = "TICKBUS_TEST_REDIS_CLI";
/// The server's log file, in its directory.
const LOG_FILE: &str = "redis.log";
/// The server's stdout and stderr (configuration errors are printed there, not logged).
const OUT_FILE: &str = "redis.out";
/// How long a server may take to answer `PING` after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The interval of every wait in this module.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Fresh ports tried by [`RedisServer::start_with`] when the chosen one was taken.
const PORT_ATTEMPTS: usize = 5;
/// How long [`RedisServer::restart`] retries binding its port.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Read and write timeout of [`RedisServer::command`] (blocking commands included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of the log shown in errors.
const LOG_TAIL: u64 = 4096;

/// The `appendfsync` policy of a server with AOF on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendFsync {
    /// `appendfsync always`: every write is on disk before it is acknowledged.
    Always,
    /// `appendfsync everysec`: fsync once a second (Redis's default).
    EverySec,
    /// `appendfsync no`: the operating system decides when to flush.
    No,
}

impl AppendFsync {
    fn as_arg(self) -> &'static str {
        match self {
            AppendFsync::Always => "always",
            AppendFsync::EverySec => "everysec",
            AppendFsync::No => "no",
        }
    }
}

/// How [`RedisServer::start_with`] configures a server.
///
/// The default is a server without persistence, without a password, started
/// from `$TICKBUS_TEST_REDIS_SERVER` or else `redis-server`.
///
/// ```
/// use tickbus::test_util::{AppendFsync, RedisServer, RedisServerOptions};
///
/// let server = RedisServer::start_with(RedisServerOptions {
///     aof: Some(AppendFsync::Always),
///     password: Some("s3cret".into()),
///     extra_args: vec![("maxmemory".into(), "10mb".into())],
///     ..Default::default()
/// })?;
/// assert_eq!(server.cli(&["CONFIG", "GET", "appendfsync"])?, "appendfsync\nalways");
/// assert_eq!(server.cli(&["CONFIG", "GET", "maxmemory"])?, "maxmemory\n10485760");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct RedisServerOptions {
    /// AOF: `None` = off (the default); `Some(fsync)` = `appendonly yes` with
    /// that `appendfsync`.
    pub aof: Option<AppendFsync>,
    /// `requirepass` (`None` = no authentication).
    pub password: Option<String>,
    /// Extra `--name value` arguments passed to the server, after the others
    /// (e.g. `("maxmemory", "10mb")`).
    pub extra_args: Vec<(String, String)>,
    /// The server binary. Default: the environment variable
    /// `TICKBUS_TEST_REDIS_SERVER`, else `redis-server` from `PATH`.
    pub binary: Option<PathBuf>,
    /// A TLS port beside the plaintext one (`tls-port`, on another free port:
    /// [`RedisServer::tls_port`]). Default `None`. The plaintext port stays, for
    /// the harness's own commands ([`RedisServer::cli`], [`RedisServer::command`]).
    pub tls: Option<ServerTls>,
}

/// The TLS port of a test server ([`RedisServerOptions::tls`]): its
/// certificate, and the CA it checks client certificates against. The server
/// needs Redis built with TLS (Debian's and most distributions' are).
///
/// ```no_run
/// use tickbus::test_util::{RedisServer, RedisServerOptions, ServerTls};
///
/// let server = RedisServer::start_with(RedisServerOptions {
///     tls: Some(ServerTls {
///         cert_file: "server.pem".into(),
///         key_file: "server.key".into(),
///         ca_file: "ca.pem".into(),
///         auth_clients: false,
///     }),
///     ..Default::default()
/// })?;
/// assert!(server.tls_url().unwrap().starts_with("rediss://127.0.0.1:"));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// The server's certificate (PEM): `tls-cert-file`.
    pub cert_file: PathBuf,
    /// Its private key (PEM): `tls-key-file`.
    pub key_file: PathBuf,
    /// The CA of client certificates (PEM): `tls-ca-cert-file` (Redis needs one
    /// even when it does not ask clients for certificates).
    pub ca_file: PathBuf,
    /// `tls-auth-clients yes`: clients must present a certificate signed by
    /// `ca_file` (mutual TLS). `false`: `tls-auth-clients no`.
    pub auth_clients: bool,
}

impl fmt::Debug for RedisServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServerOptions")
            .field("aof", &self.aof)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("extra_args", &self.extra_args)
            .field("binary", &self.binary)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A private `redis-server` process on a free port of 127.0.0.1, in a
/// temporary directory.
///
/// Dropping it kills the process (`SIGKILL`), reaps it and removes the
/// directory, also while a panicking test unwinds. See the
/// [module documentation](self).
///
/// ```
/// use tickbus::test_util::{AppendFsync, RedisServer, RedisServerOptions};
///
/// let mut server = RedisServer::start_with(RedisServerOptions {
///     aof: Some(AppendFsync::Always),
///     ..Default::default()
/// })?;
/// server.cli(&["SET", "k", "v"])?;
/// server.kill(); // a crash: SIGKILL
/// assert!(!server.is_running());
/// server.restart()?; // same port, same directory: the AOF is replayed
/// assert_eq!(server.cli(&["GET", "k"])?, "v");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct RedisServer {
    /// The running (or exited but not yet reaped) process; `None` once reaped.
    child: Option<Child>,
    port: u16,
    /// The TLS port, when [`RedisServerOptions::tls`] is set.
    tls_port: Option<u16>,
    options: RedisServerOptions,
    /// The resolved server binary.
    binary: PathBuf,
    /// Dropped after the process is killed (see `Drop`).
    dir: TempDir,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("tls_port", &self.tls_port)
            .field("pid", &self.pid())
            .field("dir", &self.dir.path())
            .field("binary", &self.binary)
            .field("options", &self.options)
            .finish()
    }
}

impl RedisServer {
    /// Starts a server with the default options (no persistence, no password)
    /// and waits until it answers `PING`.
    ///
    /// Fails if the binary cannot be run, or the server exits or does not
    /// answer within about 10 seconds (the error then holds the end of its
    /// log).
    ///
    /// ```
    /// use tickbus::test_util::RedisServer;
    ///
    /// let a = RedisServer::start()?;
    /// let b = RedisServer::start()?;
    /// assert_ne!(a.port(), b.port());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start() -> io::Result<RedisServer> {
        Self::start_with(RedisServerOptions::default())
    }

    /// Starts a server configured by `options` and waits until it answers
    /// `PING` (after loading its data).
    ///
    /// The port is chosen by the operating system (a listener bound to port 0
    /// and dropped again); if another process takes it before the server binds
    /// it, a few other ports are tried. See [`RedisServerOptions`] for an
    /// example.
    pub fn start_with(options: RedisServerOptions) -> io::Result<RedisServer> {
        let binary = match &options.binary {
            Some(binary) => binary.clone(),
            None => std::env::var_os(SERVER_ENV)
                .filter(|s| !s.is_empty())
                .map_or_else(|| PathBuf::from("redis-server"), PathBuf::from),
        };
        let dir = tempfile::Builder::new()
            .prefix("tickbus-redis-")
            .tempdir()?;
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let tls_port = match options.tls {
                Some(_) => Some(free_port()?),
                None => None,
            };
            match launch(&binary, &options, port, tls_port, dir.path()) {
                Ok(child) => {
                    return Ok(RedisServer {
                        child: Some(child),
                        port,
                        tls_port,
                        options,
                        binary,
                        dir,
                    })
                }
                Err(Failure::PortInUse(e)) => last_error = Some(e),
                Err(Failure::Fatal(e)) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no port attempt was made")))
    }

    /// The TCP port the server listens on (on 127.0.0.1). It stays the same
    /// across [`restart`](Self::restart)s.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's URL: `redis://127.0.0.1:PORT`, or
    /// `redis://:PASSWORD@127.0.0.1:PORT` when a password is set (with the
    /// password percent-encoded where it needs to be).
    ///
    /// ```
    /// use tickbus::test_util::{RedisServer, RedisServerOptions};
    ///
    /// let server = RedisServer::start()?;
    /// assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    /// let server = RedisServer::start_with(RedisServerOptions {
    ///     password: Some("pa ss".into()),
    ///     ..Default::default()
    /// })?;
    /// assert_eq!(server.url(), format!("redis://:pa%20ss@127.0.0.1:{}", server.port()));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn url(&self) -> String {
        match &self.options.password {
            Some(password) => format!(
                "redis://:{}@127.0.0.1:{}",
                percent_encode(password),
                self.port
            ),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The TLS port (on 127.0.0.1) when [`RedisServerOptions::tls`] is set.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `rediss://127.0.0.1:TLS_PORT` (with the password as in
    /// [`url`](Self::url)) when [`RedisServerOptions::tls`] is set.
    pub fn tls_url(&self) -> Option<String> {
        let tls_port = self.tls_port?;
        let plain = self.url().replacen("redis://", "rediss://", 1);
        Some(match plain.rsplit_once(':') {
            Some((head, _)) => format!("{head}:{tls_port}"),
            None => plain,
        })
    }

    /// The server's temporary working directory: its AOF directory
    /// (`appendonlydir`), RDB file and log (`redis.log`; configuration errors
    /// are in `redis.out`). Removed when the `RedisServer` is dropped.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id of the server, `None` once it has been killed, shut
    /// down or seen to have exited.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with `SIGKILL` (a crash: nothing is saved beyond what
    /// the AOF already holds) and reaps it. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if the process was already reaped, which `child` rules out.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it is running, then starts it again on the same
    /// port and in the same directory (so what its AOF holds survives), and
    /// waits until it has loaded its data and answers `PING`.
    ///
    /// Binding the port is retried for a few seconds if it is still taken.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match launch(
                &self.binary,
                &self.options,
                self.port,
                self.tls_port,
                self.dir.path(),
            ) {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(Failure::PortInUse(e)) if Instant::now() >= deadline => return Err(e),
                Err(Failure::PortInUse(_)) => std::thread::sleep(POLL_INTERVAL),
                Err(Failure::Fatal(e)) => return Err(e),
            }
        }
    }

    /// Shuts the server down gracefully (`SHUTDOWN`: it saves what its
    /// configuration says, e.g. flushes the AOF) and reaps it. Does nothing if
    /// it is not running.
    ///
    /// Fails if the server refuses (the error holds its reply) or has not
    /// exited 10 seconds later (it is then killed).
    ///
    /// ```
    /// use tickbus::test_util::RedisServer;
    ///
    /// let mut server = RedisServer::start()?;
    /// server.shutdown()?;
    /// assert!(!server.is_running());
    /// server.restart()?;
    /// assert!(server.is_running());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn shutdown(&mut self) -> io::Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        match self.command(&[b"SHUTDOWN"]) {
            // On success the server closes the connection without a reply.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                ) => {}
            Err(e) => return Err(e),
            Ok(reply) => {
                return Err(io::Error::other(format!(
                    "SHUTDOWN refused: {}",
                    String::from_utf8_lossy(&reply).trim_end()
                )))
            }
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !self.is_running() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "redis-server still running 10 s after SHUTDOWN; killed it",
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Whether the server process is still running (it may have been shut
    /// down by a `SHUTDOWN` command, or crashed). Reaps it if it has exited.
    pub fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(_)) | Err(_) => {
                self.child = None;
                false
            }
        }
    }

    /// Runs `redis-cli` with `args` against this server (authenticated if a
    /// password is set) and returns its standard output without the final
    /// newline.
    ///
    /// Fails if `redis-cli` cannot be run or exits with a non-zero status.
    /// Note that `redis-cli` exits with 0 when the server replies with an
    /// error: the output is then the error text (`ERR ...`).
    ///
    /// The binary is `$TICKBUS_TEST_REDIS_CLI` if set, else a `redis-cli`
    /// (`valkey-cli` for a `valkey-server`) in the directory of the server
    /// binary if there is one, else `redis-cli` from `PATH`.
    ///
    /// ```
    /// use tickbus::test_util::RedisServer;
    ///
    /// let server = RedisServer::start()?;
    /// server.cli(&["RPUSH", "list", "a", "b"])?;
    /// assert_eq!(server.cli(&["LRANGE", "list", "0", "-1"])?, "a\nb");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn cli(&self, args: &[&str]) -> io::Result<String> {
        let cli = self.cli_binary();
        let mut command = Command::new(&cli);
        command
            .arg("-h")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("--no-auth-warning");
        if let Some(password) = &self.options.password {
            command.arg("-a").arg(password);
        }
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| annotate(e, &format!("cannot run {}", cli.display())))?;
        let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "{} {:?} failed ({}): {}{}",
                cli.display(),
                args,
                output.status,
                stdout,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        if stdout.ends_with('\n') {
            stdout.pop();
            if stdout.ends_with('\r') {
                stdout.pop();
            }
        }
        Ok(stdout)
    }

    /// Sends one command over a fresh TCP connection, in RESP2 (after `AUTH`
    /// if a password is set), and returns the raw bytes of the reply, error
    /// replies included (`-ERR ...\r\n`).
    ///
    /// Arguments are binary-safe, unlike `redis-cli`'s. The connection times
    /// out after 60 seconds (blocking commands included).
    ///
    /// ```
    /// use tickbus::test_util::RedisServer;
    ///
    /// let server = RedisServer::start()?;
    /// assert_eq!(server.command(&[b"SET", b"bin", &[0, 255, 1]])?, b"+OK\r\n");
    /// assert_eq!(server.command(&[b"GET", b"bin"])?, b"$3\r\n\x00\xff\x01\r\n");
    /// assert_eq!(server.command(&[b"GET", b"missing"])?, b"$-1\r\n");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn command(&self, args: &[&[u8]]) -> io::Result<Vec<u8>> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let stream = TcpStream::connect_timeout(&addr, COMMAND_TIMEOUT)?;
        stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        stream.set_write_timeout(Some(COMMAND_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut replies = Replies::new(stream.try_clone()?);
        let mut writer = stream;
        if let Some(password) = &self.options.password {
            writer.write_all(&encode_command(&[b"AUTH", password.as_bytes()]))?;
            let reply = replies.next()?;
            if !reply.starts_with(b"+OK") {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "AUTH failed: {}",
                        String::from_utf8_lossy(&reply).trim_end()
                    ),
                ));
            }
        }
        writer.write_all(&encode_command(args))?;
        replies.next()
    }

    /// The server's version, from `INFO server`: `redis_version`, or
    /// `valkey_version` if there is no `redis_version`. (Valkey reports the
    /// Redis version it is compatible with as `redis_version`.)
    ///
    /// ```
    /// use tickbus::test_util::RedisServer;
    ///
    /// let server = RedisServer::start()?;
    /// let (major, _minor, _patch) = server.version()?;
    /// assert!(major >= 6);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn version(&self) -> io::Result<(u32, u32, u32)> {
        let reply = self.command(&[b"INFO", b"server"])?;
        let info = bulk_string(&reply)?;
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let version = field("redis_version")
            .or_else(|| field("valkey_version"))
            .ok_or_else(|| invalid_data("INFO server has no redis_version"))?;
        parse_version(version)
            .ok_or_else(|| invalid_data(&format!("cannot parse version {version:?}")))
    }

    /// The `redis-cli` to run (see [`cli`](Self::cli)).
    fn cli_binary(&self) -> PathBuf {
        if let Some(cli) = std::env::var_os(CLI_ENV).filter(|s| !s.is_empty()) {
            return PathBuf::from(cli);
        }
        let name = match self.binary.file_name() {
            Some(file) if file.to_string_lossy().contains("valkey") => "valkey-cli",
            _ => "redis-cli",
        };
        let server = if self.binary.components().count() > 1 {
            Some(self.binary.clone())
        } else {
            find_in_path(self.binary.as_os_str())
        };
        server
            .and_then(|server| Some(server.parent()?.join(name)))
            .filter(|cli| cli.is_file())
            .unwrap_or_else(|| PathBuf::from("redis-cli"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        // `dir` (a `TempDir`) is removed when the fields are dropped, after this.
    }
}

/// `"7.0.15"` → `(7, 0, 15)`; missing parts are 0.
fn parse_version(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(str::parse::<u32>);
    let major = parts.next()?.ok()?;
    let minor = parts.next().unwrap_or(Ok(0)).ok()?;
    let patch = parts.next().unwrap_or(Ok(0)).ok()?;
    Some((major, minor, patch))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `name` as found in a directory of `PATH`.
fn find_in_path(name: &std::ffi::OsStr) -> Option<PathBuf> {
    let path: OsString = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The last few KiB of `path` written after `start`, as text.
fn read_tail(path: &Path, start: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let from = start.max(len.saturating_sub(LOG_TAIL));
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_default()
}

fn annotate(error: io::Error, context: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{context}: {error}"))
}

fn invalid_data(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

#[cfg(test)]
mod entry_roundtrip;

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn reads_nested_replies_whole() {
        let input: &[u8] = b"*2\r\n$3\r\na\r\n\r\n*1\r\n:5\r\n+OK\r\n$-1\r\n%1\r\n+k\r\n_\r\n";
        // Whole, and one byte per read (a reply split across reads).
        let mut replies = Replies::new(input);
        let mut one_by_one = Replies::new(OneByte(input));
        for next in [
            &b"*2\r\n$3\r\na\r\n\r\n*1\r\n:5\r\n"[..],
            b"+OK\r\n",
            b"$-1\r\n",
            b"%1\r\n+k\r\n_\r\n",
        ] {
            assert_eq!(replies.next().unwrap(), next);
            assert_eq!(one_by_one.next().unwrap(), next);
        }
        assert_eq!(
            replies.next().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(
            Replies::new(&b"?what\r\n"[..]).next().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    /// A reader that hands out one byte per read.
    struct OneByte<'a>(&'a [u8]);

    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((&byte, rest)), Some(slot)) => {
                    *slot = byte;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn encodes_commands_as_arrays_of_bulk_strings() {
        assert_eq!(
            encode_command(&[b"SET", b"k\r\n", b""]),
            b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn a_taken_port_is_reported_as_such() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let binary =
            std::env::var_os(SERVER_ENV).map_or_else(|| "redis-server".into(), PathBuf::from);
        match launch(
            &binary,
            &RedisServerOptions::default(),
            port,
            None,
            dir.path(),
        ) {
            Err(Failure::PortInUse(e)) => assert!(e.to_string().contains("in use"), "{e}"),
            Err(Failure::Fatal(e)) => panic!("not a port failure: {e}"),
            Ok(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("started on a taken port");
            }
        }
    }

    #[test]
    fn parses_versions_and_encodes_passwords() {
        assert_eq!(parse_version("7.0.15"), Some((7, 0, 15)));
        assert_eq!(parse_version("8"), Some((8, 0, 0)));
        assert_eq!(parse_version("x"), None);
        assert_eq!(percent_encode("a:b@c/d%"), "a%3Ab%40c%2Fd%25");
        assert_eq!(bulk_string(b"$2\r\nhi\r\n").unwrap(), "hi");
    }
}
