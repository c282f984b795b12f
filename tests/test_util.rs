//! `tickbus::test_util::RedisServer` against real `redis-server` processes.
#![cfg(feature = "test-util")]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use tickbus::test_util::{AppendFsync, RedisServer, RedisServerOptions};

/// Whether something accepts connections on 127.0.0.1:`port`.
fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// The server's own idea of its pid.
fn server_pid(server: &RedisServer) -> u32 {
    let info = server.cli(&["INFO", "server"]).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .expect("process_id in INFO server")
        .trim()
        .parse()
        .unwrap()
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn with_aof(fsync: AppendFsync) -> RedisServerOptions {
    RedisServerOptions {
        aof: Some(fsync),
        ..Default::default()
    }
}

#[test]
fn starts_and_answers_ping() {
    let mut server = RedisServer::start().unwrap();
    assert_ne!(server.port(), 6379);
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert!(server.is_running());
    assert_eq!(server.cli(&["PING"]).unwrap(), "PONG");
    assert_eq!(server.command(&[b"PING"]).unwrap(), b"+PONG\r\n");
    assert_eq!(server.pid(), Some(server_pid(&server)));
    assert!(server.dir().join("redis.log").is_file());
    // The configuration asked for.
    assert_eq!(
        server.cli(&["CONFIG", "GET", "appendonly"]).unwrap(),
        "appendonly\nno"
    );
    assert_eq!(server.cli(&["CONFIG", "GET", "save"]).unwrap(), "save\n");
    assert_eq!(
        server.cli(&["CONFIG", "GET", "bind"]).unwrap(),
        "bind\n127.0.0.1"
    );
    assert_eq!(
        server.cli(&["CONFIG", "GET", "dir"]).unwrap(),
        format!("dir\n{}", server.dir().canonicalize().unwrap().display())
    );
    // Debug shows the port.
    assert!(format!("{server:?}").contains(&server.port().to_string()));
}

#[test]
fn two_servers_get_different_ports_and_data() {
    let a = RedisServer::start().unwrap();
    let b = RedisServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    a.cli(&["SET", "k", "a"]).unwrap();
    assert_eq!(b.cli(&["EXISTS", "k"]).unwrap(), "0");
    assert_eq!(a.cli(&["GET", "k"]).unwrap(), "a");
}

#[test]
fn servers_started_in_parallel_get_their_own_ports() {
    let servers: Vec<RedisServer> = (0..8)
        .map(|_| std::thread::spawn(|| RedisServer::start().unwrap()))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect();
    let mut ports: Vec<u16> = servers.iter().map(RedisServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len());
    for server in &servers {
        assert_eq!(server.pid(), Some(server_pid(server)));
    }
}

#[test]
fn password_server() {
    let server = RedisServer::start_with(RedisServerOptions {
        password: Some("s3cret:@/ x".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        server.url(),
        format!("redis://:s3cret%3A%40%2F%20x@127.0.0.1:{}", server.port())
    );
    // cli and command authenticate themselves.
    assert_eq!(server.cli(&["PING"]).unwrap(), "PONG");
    assert_eq!(server.command(&[b"SET", b"k", b"v"]).unwrap(), b"+OK\r\n");
    assert_eq!(server.cli(&["GET", "k"]).unwrap(), "v");
    let (major, _, _) = server.version().unwrap();
    assert!(major >= 6, "version {:?}", server.version());
    // The password is really required.
    let mut raw = TcpStream::connect((Ipv4Addr::LOCALHOST, server.port())).unwrap();
    raw.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut reply = [0; 7];
    raw.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"-NOAUTH");
    // And never shown by Debug.
    let debug = format!("{server:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
    assert!(debug.contains("redacted"), "{debug}");
}

#[test]
fn version_is_at_least_6() {
    let server = RedisServer::start().unwrap();
    let (major, minor, patch) = server.version().unwrap();
    assert!(major >= 6, "{major}.{minor}.{patch}");
}

#[test]
fn kill_stops_the_server() {
    let mut server = RedisServer::start().unwrap();
    let pid = server_pid(&server);
    server.kill();
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    assert!(!accepts(server.port()));
    assert!(!process_exists(pid));
    assert!(server.command(&[b"PING"]).is_err());
    assert!(server.cli(&["PING"]).is_err());
    server.kill(); // no-op
                   // Restart works after a kill.
    server.restart().unwrap();
    assert_eq!(server.cli(&["PING"]).unwrap(), "PONG");
}

#[test]
fn aof_always_survives_sigkill() {
    let mut server = RedisServer::start_with(with_aof(AppendFsync::Always)).unwrap();
    let port = server.port();
    let dir = server.dir().to_path_buf();
    assert_eq!(
        server.cli(&["CONFIG", "GET", "appendonly"]).unwrap(),
        "appendonly\nyes"
    );
    server.cli(&["SET", "k", "v"]).unwrap();
    server.kill();
    server.restart().unwrap();
    assert_eq!(server.port(), port);
    assert_eq!(server.dir(), dir);
    assert_eq!(server.cli(&["GET", "k"]).unwrap(), "v");
    // restart() also kills a running server first.
    server.cli(&["SET", "k2", "v2"]).unwrap();
    server.restart().unwrap();
    assert_eq!(server.cli(&["MGET", "k", "k2"]).unwrap(), "v\nv2");
}

#[test]
fn without_aof_data_is_gone_after_kill() {
    let mut server = RedisServer::start().unwrap();
    server.cli(&["SET", "k", "v"]).unwrap();
    server.kill();
    server.restart().unwrap();
    assert_eq!(server.cli(&["EXISTS", "k"]).unwrap(), "0");
}

#[test]
fn graceful_shutdown_then_restart_keeps_aof_data() {
    let mut server = RedisServer::start_with(with_aof(AppendFsync::No)).unwrap();
    server.cli(&["SET", "k", "v"]).unwrap();
    server.shutdown().unwrap();
    assert!(!server.is_running());
    assert!(!accepts(server.port()));
    server.shutdown().unwrap(); // no-op
    server.restart().unwrap();
    assert_eq!(server.cli(&["GET", "k"]).unwrap(), "v");
}

#[test]
fn shutdown_through_cli_is_noticed() {
    let mut server = RedisServer::start().unwrap();
    // redis-cli reports the closed connection in some versions: ignore its status.
    let _ = server.cli(&["SHUTDOWN", "NOSAVE"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.is_running() {
        assert!(std::time::Instant::now() < deadline, "still running");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.restart().unwrap();
    assert!(server.is_running());
}

#[test]
fn drop_kills_the_process_and_removes_the_dir() {
    let server = RedisServer::start_with(with_aof(AppendFsync::EverySec)).unwrap();
    let port = server.port();
    let dir = server.dir().to_path_buf();
    let pid = server_pid(&server);
    assert!(dir.is_dir());
    assert!(process_exists(pid));
    drop(server);
    assert!(!process_exists(pid));
    assert!(!dir.exists());
    assert!(!accepts(port));
}

#[test]
fn drop_during_a_panic_cleans_up() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let server = RedisServer::start().unwrap();
        tx.send((server_pid(&server), server.dir().to_path_buf()))
            .unwrap();
        panic!("test failure with a server alive");
    })
    .join();
    assert!(result.is_err());
    let (pid, dir) = rx.recv().unwrap();
    assert!(!process_exists(pid));
    assert!(!dir.exists());
}

#[test]
fn command_is_binary_safe() {
    let server = RedisServer::start().unwrap();
    assert_eq!(
        server.command(&[b"SET", b"bin", &[0, 255, 1]]).unwrap(),
        b"+OK\r\n"
    );
    assert_eq!(
        server.command(&[b"GET", b"bin"]).unwrap(),
        b"$3\r\n\x00\xff\x01\r\n"
    );
    // Random bytes, with CR LF and NUL in them, round-trip.
    let value: Vec<u8> = (0..=255u8).rev().chain(*b"\r\n\0").collect();
    server.command(&[b"SET", b"\r\nkey\0", &value]).unwrap();
    let reply = server.command(&[b"GET", b"\r\nkey\0"]).unwrap();
    let header = format!("${}\r\n", value.len());
    assert!(reply.starts_with(header.as_bytes()));
    assert_eq!(&reply[header.len()..reply.len() - 2], &value[..]);
    assert!(reply.ends_with(b"\r\n"));
    // Other reply types come back whole.
    assert_eq!(server.command(&[b"GET", b"missing"]).unwrap(), b"$-1\r\n");
    assert_eq!(server.command(&[b"INCR", b"n"]).unwrap(), b":1\r\n");
    server.command(&[b"RPUSH", b"l", b"a", b""]).unwrap();
    assert_eq!(
        server.command(&[b"LRANGE", b"l", b"0", b"-1"]).unwrap(),
        b"*2\r\n$1\r\na\r\n$0\r\n\r\n"
    );
    let error = server.command(&[b"NOSUCHCOMMAND"]).unwrap();
    assert!(
        error.starts_with(b"-ERR"),
        "{}",
        String::from_utf8_lossy(&error)
    );
}

#[test]
fn extra_args_and_bad_config() {
    let server = RedisServer::start_with(RedisServerOptions {
        extra_args: vec![("maxmemory".into(), "10mb".into())],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        server.cli(&["CONFIG", "GET", "maxmemory"]).unwrap(),
        "maxmemory\n10485760"
    );
    // A directive the server rejects: the error says why, at once.
    let error = RedisServer::start_with(RedisServerOptions {
        extra_args: vec![("no-such-directive".into(), "1".into())],
        ..Default::default()
    })
    .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("no-such-directive"), "{message}");
}

#[test]
fn missing_binary_is_an_error() {
    let error = RedisServer::start_with(RedisServerOptions {
        binary: Some("/nonexistent/redis-server".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "{error}");
}
