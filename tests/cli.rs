//! The `tickbus` command-line tool, run as a process against private
//! `redis-server`s started by the test (never the shared Redis at 6379).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tickbus::group::GroupConfig;
use tickbus::test_util::{RedisServer, RedisServerOptions};
use tickbus::{Bus, RedisConfig, StartAt, StreamId};

const PATIENCE: Duration = Duration::from_secs(30);

/// The tool with `--redis url`, and no Redis URL from the environment.
fn tickbus(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tickbus"));
    command
        .env_remove("REDIS_URL")
        .env_remove("TICKBUS_REDIS_URL")
        .arg("--redis")
        .arg(url);
    command
}

fn run(url: &str, args: &[&str]) -> Output {
    tickbus(url).args(args).output().expect("run tickbus")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs and expects success; the standard output.
fn ok(url: &str, args: &[&str]) -> String {
    let output = run(url, args);
    assert!(
        output.status.success(),
        "tickbus {args:?} failed ({:?}): {}",
        output.status,
        stderr(&output)
    );
    stdout(&output)
}

fn publish(url: &str, topic: &str, json: &str) -> StreamId {
    ok(url, &["publish", topic, json])
        .trim()
        .parse()
        .expect("publish prints a stream id")
}

/// The lines a child writes to a pipe, read on a thread.
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle` (up to `PATIENCE`); the line.
fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str, child: &mut Child) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(error) => {
                let _ = child.kill();
                panic!("no line with {needle:?} within {PATIENCE:?}: {error}");
            }
        }
    }
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

#[test]
fn publish_then_replay_shows_the_json_payload_in_both_forms() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    let first = publish(
        &url,
        "position:updated",
        r#"{"symbol":"ETH-PERP","qty":-5.12}"#,
    );
    let second = publish(&url, "position:updated", r#"[1, "two", null, true]"#);
    assert!(first < second);
    assert_eq!(
        server
            .cli(&["XLEN", "tickbus:stream:{position:updated}"])
            .unwrap(),
        "2"
    );

    let human = ok(&url, &["replay", "position:updated"]);
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.len(), 2, "{human}");
    let parts: Vec<&str> = lines[0].splitn(4, ' ').collect();
    assert_eq!(parts[0], first.to_string());
    assert_eq!(parts[1], "position:updated");
    assert!(uuid::Uuid::try_parse(parts[2]).is_ok(), "{}", parts[2]);
    let payload: Value = serde_json::from_str(parts[3]).unwrap();
    assert_eq!(payload["symbol"], "ETH-PERP");
    assert_eq!(payload["qty"], -5.12);
    assert!(lines[1].ends_with(r#"[1,"two",null,true]"#), "{}", lines[1]);

    let events = json_lines(&ok(&url, &["replay", "position:*", "--json"]));
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["topic"], "position:updated");
    assert_eq!(events[0]["stream_id"], first.to_string());
    assert_eq!(events[0]["payload"]["qty"], -5.12);
    assert!(events[0]["timestamp_ns"].as_u64().unwrap() > 1_600_000_000_000_000_000);
    assert!(uuid::Uuid::try_parse(events[0]["source"].as_str().unwrap()).is_ok());
    assert_eq!(
        events[1]["payload"],
        serde_json::json!([1, "two", null, true])
    );
}

#[test]
fn replay_bounds_take_ids_unix_ms_and_rfc3339_times() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    let ids: Vec<StreamId> = (0..3)
        .map(|i| publish(&url, "md:tick", &i.to_string()))
        .collect();
    let payloads = |args: &[&str]| -> Vec<Value> {
        json_lines(&ok(&url, args))
            .into_iter()
            .map(|event| event["payload"].clone())
            .collect()
    };
    let (from, to) = (ids[1].to_string(), ids[1].to_string());
    assert_eq!(
        payloads(&["replay", "md:tick", "--from", &from, "--to", &to, "--json"]),
        vec![Value::from(1)]
    );
    let last = ids[2].to_string();
    assert_eq!(
        payloads(&["replay", "md:tick", "--from", &last, "--json"]),
        vec![Value::from(2)]
    );
    // Unix ms and RFC 3339: everything from 1970 on, nothing after 2200.
    assert_eq!(
        payloads(&["replay", "md:tick", "--from", "0", "--json"]).len(),
        3
    );
    assert_eq!(
        payloads(&[
            "replay",
            "md:tick",
            "--from",
            "2200-01-01T00:00:00Z",
            "--json"
        ]),
        Vec::<Value>::new()
    );
    assert_eq!(
        payloads(&[
            "replay",
            "md:tick",
            "--from",
            "2000-01-01T01:00:00+01:00",
            "--json"
        ])
        .len(),
        3
    );
    // A bad time: a usage error that says what is accepted.
    let output = run(&url, &["replay", "md:tick", "--from", "yesterday"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("RFC 3339"), "{}", stderr(&output));
}

#[test]
fn tail_prints_an_event_published_after_it_started_and_not_the_older_ones() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    publish(&url, "md:tick", r#"{"px":1.0}"#);
    let mut child = tickbus(&url)
        .args(["tail", "md:*", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    wait_for_line(&err, "following md:tick", &mut child);
    let id = publish(&url, "md:tick", r#"{"px":2.5}"#);
    let line = wait_for_line(&out, "md:tick", &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        event["payload"]["px"], 2.5,
        "the first line is the new event, not the one before tail started"
    );
    assert_eq!(event["stream_id"], id.to_string());
}

#[test]
fn tail_from_the_beginning_in_human_form_shows_history_then_live() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    let old = publish(&url, "order:new", r#""first""#);
    let mut child = tickbus(&url)
        .args(["tail", "order:new", "--from", "beginning"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    let first = wait_for_line(&out, "order:new", &mut child);
    assert!(first.starts_with(&format!("{old} order:new ")), "{first}");
    assert!(first.ends_with(r#""first""#), "{first}");
    wait_for_line(&err, "following", &mut child);
    let new = publish(&url, "order:new", r#""second""#);
    let second = wait_for_line(&out, "order:new", &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(second.starts_with(&format!("{new} order:new ")), "{second}");
    assert!(second.ends_with(r#""second""#), "{second}");
}

#[test]
fn replay_json_shows_the_headers_of_an_event_that_has_some() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    let plain = publish(&url, "x:y", "1");
    server
        .command(&[
            b"XADD",
            b"tickbus:stream:{x:y}",
            b"*",
            b"id",
            b"0190b2a4-0000-7000-8000-000000000009",
            b"src",
            b"0190b2a4-0000-7000-8000-0000000000ff",
            b"ts",
            b"9",
            b"data",
            &[0x2a],
            b"h",
            b"\x81\xa5trace\xa3abc", // {"trace": "abc"}
        ])
        .unwrap();
    let events = json_lines(&ok(&url, &["replay", "x:y", "--json"]));
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["stream_id"], plain.to_string());
    assert!(events[0].get("headers").is_none(), "none: no key");
    assert_eq!(events[1]["headers"], serde_json::json!({"trace": "abc"}));
    assert_eq!(events[1]["payload"], 42);
}

#[test]
fn a_malformed_entry_is_reported_the_rest_is_shown_and_the_exit_status_is_3() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    let before = publish(&url, "x:y", "1");
    let foreign = server
        .cli(&["XADD", "tickbus:stream:{x:y}", "*", "foo", "bar"])
        .unwrap();
    let after = publish(&url, "x:y", "2");
    let output = run(&url, &["replay", "x:y"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let shown = stdout(&output);
    let ids: Vec<&str> = shown
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(ids, [before.to_string(), after.to_string()]);
    let err = stderr(&output);
    assert!(
        err.contains(&format!("entry {foreign}: not a tickbus entry")),
        "{err}"
    );
    assert!(err.contains("1 of 3 entries could not be shown"), "{err}");
}

#[test]
fn groups_and_pending_show_a_member_holding_unacked_entries() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    let ids: Vec<StreamId> = (0..3)
        .map(|i| publish(&url, "job:label", &i.to_string()))
        .collect();
    let key = "tickbus:stream:{job:label}";
    server
        .cli(&["XGROUP", "CREATE", key, "labelers", "0"])
        .unwrap();
    server
        .cli(&[
            "XREADGROUP",
            "GROUP",
            "labelers",
            "alice",
            "COUNT",
            "2",
            "STREAMS",
            key,
            ">",
        ])
        .unwrap();

    let groups = json_lines(&ok(&url, &["groups", "job:*", "--json"]));
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["topic"], "job:label");
    let group = &groups[0]["groups"][0];
    assert_eq!(group["name"], "labelers");
    assert_eq!(group["pending"], 2);
    assert_eq!(group["lag"], 1);
    assert_eq!(group["last_delivered"], ids[1].to_string());
    assert_eq!(group["consumers"][0]["name"], "alice");
    assert_eq!(group["consumers"][0]["pending"], 2);

    let human = ok(&url, &["groups"]);
    assert!(
        human.contains("group labelers  consumers 1  pending 2  lag 1"),
        "{human}"
    );
    assert!(human.contains("consumer alice  pending 2"), "{human}");

    let pending: Value =
        serde_json::from_str(&ok(&url, &["pending", "labelers", "job:label", "--json"])).unwrap();
    assert_eq!(pending["count"], 2);
    assert_eq!(pending["first_id"], ids[0].to_string());
    assert_eq!(pending["last_id"], ids[1].to_string());
    assert_eq!(
        pending["consumers"],
        serde_json::json!([{"name": "alice", "pending": 2}])
    );
    let oldest = pending["oldest"].as_array().unwrap();
    assert_eq!(oldest.len(), 2);
    assert_eq!(oldest[0]["id"], ids[0].to_string());
    assert_eq!(oldest[0]["consumer"], "alice");
    assert_eq!(oldest[0]["deliveries"], 1);

    let human = ok(&url, &["pending", "labelers", "job:label", "--count", "1"]);
    assert!(human.contains("2 pending"), "{human}");
    assert!(human.contains("alice  2"), "{human}");
    assert!(
        human.contains(&format!("{}  consumer alice  idle ", ids[0])),
        "{human}"
    );
    assert_eq!(
        human.matches("consumer alice  idle").count(),
        1,
        "--count 1 lists one entry: {human}"
    );

    let missing = run(&url, &["pending", "nobody", "job:label"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("has no consumer group \"nobody\""),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn dlq_list_shows_a_dead_letter_and_requeue_puts_it_back() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    // A poison entry (a string where the group's members expect a u64).
    server
        .command(&[
            b"XADD",
            b"tickbus:stream:{job:label}",
            b"*",
            b"id",
            b"0190b2a4-0000-7000-8000-000000000001",
            b"src",
            b"0190b2a4-0000-7000-8000-0000000000ff",
            b"ts",
            b"1",
            b"data",
            b"\xa3abc",
        ])
        .unwrap();
    let mut config = RedisConfig::from_url(&url).unwrap();
    config.read_block = Duration::from_millis(200);
    let bus = Bus::builder().redis(config).build().unwrap();
    let consumer = bus
        .group::<u64>(
            "labelers",
            "job:label",
            GroupConfig {
                start: StartAt::Beginning,
                consumer: Some("c1".into()),
                block: Duration::from_millis(100),
                ..Default::default()
            },
        )
        .unwrap();
    // Decoding happens in `recv`: the poison entry is dead-lettered on the way
    // to the good event after it.
    publish(&url, "job:label", "5");
    let mut consumer = consumer;
    let good = consumer
        .recv_blocking()
        .expect("the consumer is open")
        .expect("the good event");
    assert_eq!(*good, 5);
    good.ack();
    let deadline = Instant::now() + PATIENCE;
    while consumer.stats().dead_lettered < 1 {
        assert!(Instant::now() < deadline, "no dead letter");
        std::thread::sleep(Duration::from_millis(10));
    }
    consumer.shutdown();

    let listed = ok(&url, &["dlq", "list"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(
        listed.contains("job:label  reason decode  deliveries 1  group labelers  consumer c1"),
        "{listed}"
    );
    assert!(listed.contains(r#"payload "abc""#), "{listed}");
    let letters = json_lines(&ok(&url, &["dlq", "list", "job:label", "--json"]));
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["reason"], "decode");
    assert_eq!(letters[0]["group"], "labelers");
    assert!(!letters[0]["error"].as_str().unwrap().is_empty());
    assert_eq!(
        letters[0]["event_id"],
        "0190b2a4-0000-7000-8000-000000000001"
    );
    let dead_id = letters[0]["id"].as_str().unwrap().to_string();

    // An id that is not there: an error, nothing moved.
    let wrong = run(&url, &["dlq", "requeue", "job:label", "--id", "1-1"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        stderr(&wrong).contains("no dead letter"),
        "{}",
        stderr(&wrong)
    );
    // Neither --id nor --all: a usage error.
    assert_eq!(
        run(&url, &["dlq", "requeue", "job:label"]).status.code(),
        Some(2)
    );

    let requeued = ok(&url, &["dlq", "requeue", "job:label", "--id", &dead_id]);
    assert_eq!(requeued.trim(), "requeued 1 dead letter of job:label");
    assert_eq!(
        server.cli(&["XLEN", "tickbus:dlq:{job:label}"]).unwrap(),
        "0"
    );
    let events = json_lines(&ok(&url, &["replay", "job:label", "--json"]));
    assert_eq!(
        events.len(),
        3,
        "the poison entry, the good event, the re-driven copy"
    );
    assert_eq!(
        events[2]["event_id"],
        "0190b2a4-0000-7000-8000-000000000001"
    );
    assert_eq!(events[2]["payload"], "abc");
}

#[test]
fn stats_json_has_each_streams_length_memory_groups_and_cache_namespaces() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    for i in 0..5 {
        publish(&url, "md:tick", &i.to_string());
    }
    let last = publish(&url, "md:book", "{}");
    server
        .cli(&["XGROUP", "CREATE", "tickbus:stream:{md:tick}", "g", "0"])
        .unwrap();
    for key in [
        "tickbus:cache:prices:ETH",
        "tickbus:cache:prices:BTC",
        "tickbus:cache:fx:EURUSD",
        "other:cache:prices:X",
    ] {
        server.cli(&["SET", key, "1"]).unwrap();
    }
    let stats: Value = serde_json::from_str(&ok(&url, &["stats", "--json"])).unwrap();
    let streams = stats["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 2);
    assert_eq!(streams[0]["topic"], "md:book");
    assert_eq!(streams[0]["length"], 1);
    assert_eq!(streams[0]["last_id"], last.to_string());
    assert_eq!(streams[1]["topic"], "md:tick");
    assert_eq!(streams[1]["key"], "tickbus:stream:{md:tick}");
    assert_eq!(streams[1]["length"], 5);
    assert!(streams[1]["memory_bytes"].as_u64().unwrap() > 0);
    assert_eq!(streams[1]["groups"][0]["name"], "g");
    assert_eq!(streams[1]["groups"][0]["lag"], 5);
    assert_eq!(
        stats["cache"],
        serde_json::json!([{"namespace": "fx", "keys": 1}, {"namespace": "prices", "keys": 2}])
    );
    let human = ok(&url, &["stats"]);
    assert!(human.contains("md:tick  length 5  first "), "{human}");
    assert!(human.contains("group g  pending 0  lag 5"), "{human}");
    assert!(human.contains("prices  2 keys"), "{human}");
}

#[test]
fn an_unreachable_server_fails_with_a_clear_message() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // free once the listener is dropped
    let url = format!("redis://127.0.0.1:{port}");
    for args in [
        &["stats"][..],
        &["replay", "md:tick"],
        &["publish", "md:tick", "1"],
    ] {
        let output = run(&url, args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let err = stderr(&output);
        assert!(
            err.contains(&format!("cannot connect to Redis at {url}")),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("Connection refused") && !err.contains("Os {"),
            "the OS error in words: {err}"
        );
        assert!(stdout(&output).is_empty());
    }
    let output = run("http://127.0.0.1:6379", &["stats"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("not a Redis URL"),
        "{}",
        stderr(&output)
    );
    let output = Command::new(env!("CARGO_BIN_EXE_tickbus"))
        .env_remove("REDIS_URL")
        .env_remove("TICKBUS_REDIS_URL")
        .arg("stats")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no Redis URL"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_wrong_or_missing_password_fails_naming_authentication() {
    let server = RedisServer::start_with(RedisServerOptions {
        password: Some("s3cret".into()),
        ..Default::default()
    })
    .unwrap();
    let port = server.port();
    for url in [
        format!("redis://:hunter2x@127.0.0.1:{port}"),
        format!("redis://127.0.0.1:{port}"),
    ] {
        let output = run(&url, &["stats"]);
        assert_eq!(output.status.code(), Some(1), "{url}");
        let err = stderr(&output);
        assert!(err.contains("authentication failed"), "{url}: {err}");
        assert!(
            !err.contains("hunter2x"),
            "the password is never shown: {err}"
        );
    }
    // The right one works, also from the environment.
    let output = Command::new(env!("CARGO_BIN_EXE_tickbus"))
        .env_remove("REDIS_URL")
        .env("TICKBUS_REDIS_URL", server.url())
        .arg("stats")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("streams: 0"));
}

#[test]
fn a_missing_stream_or_bad_input_fails_clearly() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    publish(&url, "md:tick", "1");
    for (args, needle) in [
        (&["replay", "md:nope"][..], "topic md:nope has no stream"),
        (
            &["replay", "nope:*"],
            "no stream matches the pattern nope:*",
        ),
        (&["tail", "md:nope"], "topic md:nope has no stream"),
        (&["groups", "md:nope"], "topic md:nope has no stream"),
        (&["pending", "g", "md:nope"], "topic md:nope has no stream"),
        (&["replay", "Bad Topic"], "invalid topic"),
        (&["publish", "md:tick", "{not json"], "not valid JSON"),
    ] {
        let output = run(&url, args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(needle),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["tail", "--help"],
        &["replay", "--help"],
        &["publish", "--help"],
        &["groups", "--help"],
        &["pending", "--help"],
        &["dlq", "--help"],
        &["dlq", "list", "--help"],
        &["dlq", "requeue", "--help"],
        &["stats", "--help"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tickbus"))
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}");
        let text = stdout(&output);
        assert!(text.contains("Usage: tickbus"), "{args:?}: {text}");
        assert!(text.contains("--redis <URL>"), "{args:?}: {text}");
    }
}

#[test]
fn admin_answers_with_plain_structs_and_not_found_kinds() {
    use tickbus::admin::Admin;
    use tickbus::ErrorKind;
    let server = RedisServer::start().unwrap();
    let url = server.url();
    publish(&url, "md:tick", "1");
    let last = publish(&url, "md:tick", "2");
    publish(&url, "risk:calculated", "3");
    fn send_sync<T: Send + Sync>(_: &T) {}
    let admin = Admin::connect(RedisConfig::from_url(&url).unwrap()).unwrap();
    send_sync(&admin); // shared by an operator's threads, or moved into spawn_blocking
    assert!(admin.server_version() >= (6, 2, 0));
    let names = |filter: Option<&str>| -> Vec<String> {
        admin
            .topics(filter)
            .unwrap()
            .iter()
            .map(|t| t.to_string())
            .collect()
    };
    assert_eq!(names(None), ["md:tick", "risk:calculated"]);
    assert_eq!(names(Some("md:*")), ["md:tick"]);
    assert_eq!(names(Some("risk:calculated")), ["risk:calculated"]);
    assert!(names(Some("md:nope")).is_empty());
    assert_eq!(
        admin.topics(Some("md:**")).unwrap_err().kind(),
        ErrorKind::InvalidPattern
    );
    let stats = admin.stream_stats("md:tick").unwrap();
    assert_eq!((stats.length, stats.last_id), (2, Some(last)));
    assert!(stats.groups.is_empty());
    assert_eq!(
        admin.stream_stats("md:nope").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        admin.groups("md:nope").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        admin.pending("g", "md:tick", 5).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    server
        .cli(&["XGROUP", "CREATE", "tickbus:stream:{md:tick}", "g", "$"])
        .unwrap();
    let pending = admin.pending("g", "md:tick", 5).unwrap();
    assert_eq!((pending.count, pending.oldest.len()), (0, 0));
    let groups = admin.groups("md:tick").unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!((groups[0].name.as_str(), groups[0].lag), ("g", Some(0)));
    assert!(admin.dead_letter_topics(None).unwrap().is_empty());
    assert!(admin.cache_namespaces().unwrap().is_empty());
}

#[test]
fn bin_payloads_and_integer_keys_are_shown_as_json() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    for data in [&b"\xc4\x03abc"[..], b"\x81\x01\x02"] {
        server
            .command(&[
                b"XADD",
                b"tickbus:stream:{md:raw}",
                b"*",
                b"id",
                b"0190b2a4-0000-7000-8000-000000000001",
                b"src",
                b"0190b2a4-0000-7000-8000-0000000000ff",
                b"ts",
                b"1",
                b"data",
                data,
            ])
            .unwrap();
    }
    let events = json_lines(&ok(&url, &["replay", "md:raw", "--json"]));
    let payloads: Vec<&Value> = events.iter().map(|e| &e["payload"]).collect();
    assert_eq!(
        payloads,
        [
            &serde_json::json!([97, 98, 99]),
            &serde_json::json!({"1": 2})
        ]
    );
}
