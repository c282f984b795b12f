//! Starting a server process and waiting until it answers (and telling a
//! port taken by another process from other failures).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::resp::{bulk_string, encode_command, Replies};
use super::{
    annotate, file_len, read_tail, RedisServerOptions, LOG_FILE, OUT_FILE, POLL_INTERVAL,
    READY_TIMEOUT,
};

/// Why a server did not come up.
pub(super) enum Failure {
    /// Its port was taken: another port (or a later attempt) may work.
    PortInUse(io::Error),
    /// Anything else.
    Fatal(io::Error),
}

/// Spawns a server on `port` in `dir` and waits until it is ready. On failure
/// the process is killed and reaped.
pub(super) fn launch(
    binary: &Path,
    options: &RedisServerOptions,
    port: u16,
    tls_port: Option<u16>,
    dir: &Path,
) -> Result<Child, Failure> {
    // Where this attempt's output starts, to show only its own lines in errors.
    let log_start = file_len(&dir.join(LOG_FILE));
    let out_start = file_len(&dir.join(OUT_FILE));
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(OUT_FILE))
        .map_err(Failure::Fatal)?;
    let err = out.try_clone().map_err(Failure::Fatal)?;

    let mut command = Command::new(binary);
    command
        .arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(LOG_FILE)
        .arg("--daemonize")
        .arg("no")
        .arg("--save")
        .arg("")
        .arg("--appendonly")
        .arg(if options.aof.is_some() { "yes" } else { "no" });
    if let Some(fsync) = options.aof {
        command.arg("--appendfsync").arg(fsync.as_arg());
    }
    if let Some(password) = &options.password {
        command.arg("--requirepass").arg(password);
    }
    command.arg("--protected-mode").arg("no");
    if let (Some(tls), Some(tls_port)) = (&options.tls, tls_port) {
        command
            .arg("--tls-port")
            .arg(tls_port.to_string())
            .arg("--tls-cert-file")
            .arg(&tls.cert_file)
            .arg("--tls-key-file")
            .arg(&tls.key_file)
            .arg("--tls-ca-cert-file")
            .arg(&tls.ca_file)
            .arg("--tls-auth-clients")
            .arg(if tls.auth_clients { "yes" } else { "no" });
    }
    for (name, value) in &options.extra_args {
        command
            .arg(format!("--{}", name.trim_start_matches('-')))
            .arg(value);
    }
    let mut child = command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| Failure::Fatal(annotate(e, &format!("cannot run {}", binary.display()))))?;

    let tail = || {
        let mut text = read_tail(&dir.join(LOG_FILE), log_start);
        text.push_str(&read_tail(&dir.join(OUT_FILE), out_start));
        text
    };
    let password = options.password.as_deref();
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut foreign_pid = None;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Err(exited(binary, port, status, tail())),
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Failure::Fatal(e));
            }
        }
        match probe(port, password) {
            Probe::Pong { pid } if pid == child.id() => return Ok(child),
            Probe::Pong { pid } => foreign_pid = Some(pid),
            // Authentication configured through `extra_args`: cannot look further.
            Probe::NoAuth if password.is_none() => return Ok(child),
            Probe::NoAuth | Probe::NotYet => {}
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let status = child.wait();
            // It may have exited by itself just now: then say why.
            if let Ok(status) = status {
                if status.code().is_some() {
                    return Err(exited(binary, port, status, tail()));
                }
            }
            let mut message = format!(
                "{} did not answer PING on port {port} within {} s",
                binary.display(),
                READY_TIMEOUT.as_secs()
            );
            if let Some(pid) = foreign_pid {
                message.push_str(&format!(
                    " (a server with process id {pid}, not {}, answers there: is the binary a \
                     wrapper that does not exec?)",
                    child.id()
                ));
            }
            message.push_str("; log:\n");
            message.push_str(&tail());
            return Err(Failure::Fatal(io::Error::new(
                io::ErrorKind::TimedOut,
                message,
            )));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The error for a server that exited before it was ready.
fn exited(binary: &Path, port: u16, status: ExitStatus, tail: String) -> Failure {
    let error = io::Error::other(format!(
        "{} exited ({status}) before it was ready on port {port}; log:\n{tail}",
        binary.display()
    ));
    if tail.contains("Address already in use") {
        Failure::PortInUse(error)
    } else {
        Failure::Fatal(error)
    }
}

/// What a readiness probe found.
enum Probe {
    /// The server is loaded and answers `PING`; `pid` is its `process_id`.
    Pong { pid: u32 },
    /// The server answers but wants a password.
    NoAuth,
    /// Nothing listens yet, the server is still loading, or anything else.
    NotYet,
}

/// Connects to the port and sends `[AUTH]`, `PING` and `INFO server`. The pid
/// tells our server from another process that got the port first.
fn probe(port: u16, password: Option<&str>) -> Probe {
    let attempt = || -> io::Result<Probe> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        let mut request = Vec::new();
        if let Some(password) = password {
            request.extend(encode_command(&[b"AUTH", password.as_bytes()]));
        }
        request.extend(encode_command(&[b"PING"]));
        request.extend(encode_command(&[b"INFO", b"server"]));
        let mut replies = Replies::new(&stream);
        (&stream).write_all(&request)?;
        if password.is_some() && !replies.next()?.starts_with(b"+OK") {
            return Ok(Probe::NotYet);
        }
        let pong = replies.next()?;
        if pong.starts_with(b"-NOAUTH") {
            return Ok(Probe::NoAuth);
        }
        if !pong.starts_with(b"+PONG") {
            return Ok(Probe::NotYet); // e.g. -LOADING
        }
        let info = replies.next()?;
        let pid = bulk_string(&info)?
            .lines()
            .find_map(|line| line.strip_prefix("process_id:")?.trim().parse().ok());
        Ok(pid.map_or(Probe::NotYet, |pid| Probe::Pong { pid }))
    };
    attempt().unwrap_or(Probe::NotYet)
}

/// A port of 127.0.0.1 that nothing listened on a moment ago.
pub(super) fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
