//! `redis-benchmark -P 64` XADD against the private server: the server's own
//! ceiling for a pipelined writer.
//!
//! The binary is `$TICKBUS_BENCH_REDIS_BENCHMARK` if set, else the
//! `redis-benchmark` (or `valkey-benchmark`) beside `$TICKBUS_TEST_REDIS_SERVER`
//! when that names a path, else `redis-benchmark` from `PATH`. Arguments are
//! passed without a shell, so `*` and `~` need no quoting. It runs with `--csv`
//! (`-q` prints progress lines ending in `\r` before its summary), and the figure
//! is its `rps` column: requests/s between its first request and its last reply.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{
    ascii_payload, unique, unix_ns, Cleaner, Env, ThroughputRig, REDIS_BENCHMARK,
    REDIS_BENCHMARK_4FIELDS, STREAM_MAXLEN,
};

/// Requests in flight per connection (`-P`), and connections (`-c`).
const PIPELINE: u32 = 64;
const CONNECTIONS: u32 = 50;

fn binary() -> PathBuf {
    if let Some(binary) =
        std::env::var_os("TICKBUS_BENCH_REDIS_BENCHMARK").filter(|s| !s.is_empty())
    {
        return PathBuf::from(binary);
    }
    let server = std::env::var_os("TICKBUS_TEST_REDIS_SERVER")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    if let Some(server) = server.filter(|server| server.components().count() > 1) {
        let name = if server.to_string_lossy().contains("valkey") {
            "valkey-benchmark"
        } else {
            "redis-benchmark"
        };
        if let Some(sibling) = server.parent().map(|dir| dir.join(name)) {
            if sibling.is_file() {
                return sibling;
            }
        }
    }
    PathBuf::from("redis-benchmark")
}

/// Both variants, or none (with a note) if the binary cannot be run.
pub fn contenders(env: &Env) -> Vec<Box<dyn ThroughputRig>> {
    let binary = binary();
    if let Err(error) = Command::new(&binary).arg("--version").output() {
        println!(
            "{} cannot be run ({error}): the redis-benchmark anchors are skipped",
            binary.display()
        );
        return Vec::new();
    }
    let port = env.redis.port();
    let data = ascii_payload();
    let id = "0190f5c2-7d4e-7a3b-8c21-5e6f7a8b9c0d".to_string();
    let src = "6f1c2d3e-4b5a-4968-8776-a5b4c3d2e1f0".to_string();
    vec![
        Box::new(RedisBenchmark {
            name: REDIS_BENCHMARK,
            binary: binary.clone(),
            port,
            fields: vec!["data".into(), data.clone()],
            cleaner: env.cleaner(),
        }),
        Box::new(RedisBenchmark {
            name: REDIS_BENCHMARK_4FIELDS,
            binary,
            port,
            fields: vec![
                "id".into(),
                id,
                "src".into(),
                src,
                "ts".into(),
                unix_ns().to_string(),
                "data".into(),
                data,
            ],
            cleaner: env.cleaner(),
        }),
    ]
}

struct RedisBenchmark {
    name: &'static str,
    binary: PathBuf,
    port: u16,
    /// The field-value arguments of the XADD.
    fields: Vec<String>,
    cleaner: Cleaner,
}

/// The `rps` column of `redis-benchmark --csv` output.
fn parse_rps(stdout: &str) -> Option<f64> {
    let row = stdout
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("\"XADD"))?;
    // "test","rps",…: the test name holds no comma (key and payload are ours).
    row.split(',').nth(1)?.trim_matches('"').parse().ok()
}

impl ThroughputRig for RedisBenchmark {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, events: u64) -> Duration {
        let key = unique("bench:rb");
        let output = Command::new(&self.binary)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-P", &PIPELINE.to_string(), "-c", &CONNECTIONS.to_string()])
            .args(["-n", &events.to_string(), "--csv"])
            .args(["XADD", &key, "MAXLEN", "~", &STREAM_MAXLEN.to_string(), "*"])
            .args(&self.fields)
            .output()
            .expect("run redis-benchmark");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let rps = parse_rps(&stdout).unwrap_or_else(|| {
            panic!(
                "redis-benchmark ({}) printed no XADD rate:\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        });
        // It rounds the request count up to whole pipelines (10 000 with -P 64
        // writes 10 048 entries); its rate is still requests/s.
        let written = self.cleaner.stream_len(&key);
        let slack = u64::from(PIPELINE * CONNECTIONS);
        assert!(
            (events..=events + slack).contains(&written) || events > STREAM_MAXLEN as u64,
            "redis-benchmark wrote {written} entries, not {events}:\n{stdout}"
        );
        self.cleaner.delete(&key);
        Duration::from_secs_f64(events as f64 / rps)
    }
}
