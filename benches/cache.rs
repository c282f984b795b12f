//! The tiered cache's two hit paths against their bare anchors, in one run:
//!
//! * `memory_hit`: `Cache::get` of a key held in memory (polled once: a memory
//!   hit completes on its first poll) against a bare `moka::sync::Cache::get` of
//!   the same key type and value (`String` keys, 64-byte `String` values, 10 000
//!   keys cycled). Target: at most 1.5× the anchor.
//! * `redis_hit`: `Cache::get` of a key held in Redis and not in memory (every
//!   lookup a new key of 200 000 prefilled ones; the hit fills memory, which is
//!   part of the path) against a bare fred `GET` of the same key plus the same
//!   MessagePack decode. Both clients' connections live on their own runtime
//!   thread (tickbus's cache I/O thread; a 1-worker runtime for fred), and both
//!   are called from the bench thread's current-thread runtime. Target: at most
//!   1.2× the anchor.
//! * `miss` (criterion only, no anchor): the in-process single flight, on an
//!   embedded bus (memory and loader, no Redis) so that nothing else is timed.
//!   `get_or_load_1`: `Cache::get_or_load` of a fresh key whose loader is ready
//!   at once (memory miss, the flight, the loader call, the memory fill);
//!   `get_or_load_8_coalesced`: 8 lookups of one fresh key joined in one task,
//!   its loader pending once so that the other 7 wait on the first one's flight
//!   (figures per key, so per 8 lookups and 1 load).
//!
//! Figures come from a PRIVATE `redis-server` the bench starts itself
//! (`tickbus::test_util::RedisServer`), never from a shared one. After criterion,
//! **interleaved rounds** (`rounds/…`) run each contender in turn, the order
//! rotated per round, and print the pooled ratio with the range of per-round
//! ratios: on a shared machine they say more than one criterion pair.
//!
//! Run with `cargo bench --bench cache --all-features` (about a minute), or
//! `-- rounds` for the rounds only.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use fred::prelude::*;
use tickbus::cache::{Cache, CacheConfig};
use tickbus::test_util::RedisServer;
use tickbus::{Bus, LiveBus, RedisConfig};

const MEMORY_KEYS: usize = 10_000;
const REDIS_KEYS: usize = 200_000;
const ROUNDS: usize = 8;
const MEMORY_OPS_PER_ROUND: usize = 2_000_000;
const REDIS_OPS_PER_ROUND: usize = 10_000;
/// Fresh keys of one `miss` cache before a new one is made.
const MISS_KEYS: usize = 200_000;

fn value(i: usize) -> String {
    format!("{i:064}")
}

fn config() -> CacheConfig {
    CacheConfig {
        memory_capacity: 1_000_000,
        ..CacheConfig::with_ttl(Duration::from_secs(3600))
    }
}

struct Rig {
    _server: RedisServer,
    bus: LiveBus,
    memory_cache: Cache<String>,
    moka: moka::sync::Cache<String, String>,
    keys: Vec<String>,
    fred: Client,
    _fred_runtime: tokio::runtime::Runtime,
    runtime: tokio::runtime::Runtime,
    redis_keys: Vec<String>,
    /// The next Redis key to read, and the cache reading them (a fresh one when
    /// the keys run out, so every read misses memory).
    next: usize,
    redis_cache: Cache<String>,
    /// The `miss` contenders' cache (embedded bus: memory and loader only), its
    /// bus, and the next fresh key's number.
    miss_bus: Bus,
    miss_cache: Cache<String>,
    miss_next: usize,
}

impl Rig {
    fn new() -> Rig {
        let server = RedisServer::start().expect("redis-server");
        let bus = Bus::builder()
            .redis(RedisConfig::from_url(&server.url()).unwrap())
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let memory_cache = bus.cache::<String>("bench_memory", config()).unwrap();
        let moka = moka::sync::Cache::builder()
            .max_capacity(1_000_000)
            .time_to_live(Duration::from_secs(3600))
            .build();
        let keys: Vec<String> = (0..MEMORY_KEYS).map(|i| format!("key-{i}")).collect();
        runtime.block_on(async {
            for (i, key) in keys.iter().enumerate() {
                memory_cache.set(key, value(i)).await.unwrap();
                moka.insert(key.clone(), value(i));
            }
        });
        // Prefill Redis through a cache (tickbus's layout), in pipelined batches.
        let filler = bus.cache::<String>("bench_redis", config()).unwrap();
        let redis_keys: Vec<String> = (0..REDIS_KEYS).map(|i| format!("r-{i}")).collect();
        runtime.block_on(async {
            for chunk in redis_keys.chunks(1000) {
                let sets = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, key)| filler.set(key, value(i)));
                for result in futures::future::join_all(sets).await {
                    result.unwrap();
                }
            }
        });
        let fred_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let url = server.url();
        let fred = fred_runtime.block_on(async move {
            let client = Builder::from_config(Config::from_url(&url).unwrap())
                .build()
                .unwrap();
            client.init().await.unwrap();
            client
        });
        let redis_cache = bus.cache::<String>("bench_redis", config()).unwrap();
        let miss_bus = Bus::builder().build().unwrap();
        let miss_cache = miss_bus.cache::<String>("bench_miss", config()).unwrap();
        Rig {
            _server: server,
            bus,
            memory_cache,
            moka,
            keys,
            fred,
            _fred_runtime: fred_runtime,
            runtime,
            redis_keys,
            next: 0,
            redis_cache,
            miss_bus,
            miss_cache,
            miss_next: 0,
        }
    }

    /// The first of `ops` fresh keys of the `miss` contenders (a new cache, so
    /// an empty memory, every `MISS_KEYS`).
    fn take_miss_keys(&mut self, ops: usize) -> usize {
        if self.miss_next + ops > MISS_KEYS {
            self.miss_next = 0;
            self.miss_cache = self
                .miss_bus
                .cache::<String>("bench_miss", config())
                .unwrap();
        }
        let first = self.miss_next;
        self.miss_next += ops;
        first
    }

    fn tickbus_miss(&mut self, ops: usize) -> Duration {
        let first = self.take_miss_keys(ops);
        let cache = &self.miss_cache;
        let keys: Vec<String> = (first..first + ops).map(|i| format!("m-{i}")).collect();
        self.runtime.block_on(async {
            let started = Instant::now();
            for key in &keys {
                let got = cache
                    .get_or_load(key, |key| async move { Ok::<_, std::io::Error>(key) })
                    .await;
                black_box(got.unwrap());
            }
            started.elapsed()
        })
    }

    fn tickbus_miss_coalesced(&mut self, ops: usize) -> Duration {
        let first = self.take_miss_keys(ops);
        let cache = &self.miss_cache;
        let keys: Vec<String> = (first..first + ops).map(|i| format!("m-{i}")).collect();
        self.runtime.block_on(async {
            let started = Instant::now();
            for key in &keys {
                let lookups = (0..8).map(|_| {
                    cache.get_or_load(key, |key| async move {
                        tokio::task::yield_now().await;
                        Ok::<_, std::io::Error>(key)
                    })
                });
                for got in futures::future::join_all(lookups).await {
                    black_box(got.unwrap());
                }
            }
            started.elapsed()
        })
    }

    fn tickbus_memory(&self, ops: usize) -> Duration {
        use futures::FutureExt as _;
        let started = Instant::now();
        for i in 0..ops {
            let key = &self.keys[i % MEMORY_KEYS];
            let got = self.memory_cache.get(key).now_or_never();
            black_box(got.expect("a memory hit is ready at once").unwrap());
        }
        started.elapsed()
    }

    fn moka_memory(&self, ops: usize) -> Duration {
        let started = Instant::now();
        for i in 0..ops {
            let key = &self.keys[i % MEMORY_KEYS];
            black_box(self.moka.get(key.as_str()).unwrap());
        }
        started.elapsed()
    }

    /// `ops` fresh keys for the Redis-hit contenders (a new tickbus cache, so an
    /// empty memory layer, when they run out).
    fn take_keys(&mut self, ops: usize) -> std::ops::Range<usize> {
        if self.next + ops > REDIS_KEYS {
            self.next = 0;
            self.redis_cache = self.bus.cache::<String>("bench_redis", config()).unwrap();
        }
        let range = self.next..self.next + ops;
        self.next += ops;
        range
    }

    fn tickbus_redis(&mut self, ops: usize) -> Duration {
        let range = self.take_keys(ops);
        let (cache, keys) = (&self.redis_cache, &self.redis_keys);
        self.runtime.block_on(async {
            let started = Instant::now();
            for i in range {
                black_box(cache.get(&keys[i]).await.unwrap().unwrap());
            }
            started.elapsed()
        })
    }

    fn fred_redis(&mut self, ops: usize) -> Duration {
        let range = self.take_keys(ops);
        let (fred, keys) = (&self.fred, &self.redis_keys);
        self.runtime.block_on(async {
            let started = Instant::now();
            for i in range {
                let key = format!("tickbus:cache:bench_redis:{}", keys[i]);
                let bytes: Vec<u8> = fred.get(key).await.unwrap();
                black_box(rmp_serde::from_slice::<String>(&bytes).unwrap());
            }
            started.elapsed()
        })
    }
}

fn per_op(elapsed: Duration, ops: usize) -> f64 {
    elapsed.as_nanos() as f64 / ops as f64
}

fn rounds(rig: &mut Rig, quick: bool) {
    let (rounds, memory_ops, redis_ops) = if quick {
        (1, 10_000, 100)
    } else {
        (ROUNDS, MEMORY_OPS_PER_ROUND, REDIS_OPS_PER_ROUND)
    };
    let mut memory = (Vec::new(), Vec::new());
    let mut redis = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let first_tickbus = round % 2 == 0;
        for turn in 0..2 {
            if (turn == 0) == first_tickbus {
                memory
                    .0
                    .push(per_op(rig.tickbus_memory(memory_ops), memory_ops));
                redis
                    .0
                    .push(per_op(rig.tickbus_redis(redis_ops), redis_ops));
            } else {
                memory
                    .1
                    .push(per_op(rig.moka_memory(memory_ops), memory_ops));
                redis.1.push(per_op(rig.fred_redis(redis_ops), redis_ops));
            }
        }
    }
    let report = |name: &str,
                  unit_ops: usize,
                  (ours, anchor): &(Vec<f64>, Vec<f64>),
                  target: f64| {
        let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
        let ratios: Vec<f64> = ours.iter().zip(anchor).map(|(o, a)| o / a).collect();
        let min = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().cloned().fold(0.0, f64::max);
        println!(
            "rounds/{name}: tickbus {:.1} ns/op, anchor {:.1} ns/op, ratio {:.2} (per round {:.2}..{:.2}; target <= {target}; {} rounds of {unit_ops} ops)",
            mean(ours),
            mean(anchor),
            mean(ours) / mean(anchor),
            min,
            max,
            ours.len()
        );
    };
    if std::env::var_os("TICKBUS_BENCH_VERBOSE").is_some() {
        println!(
            "redis rounds (tickbus, fred) ns/op: {:?}",
            redis.0.iter().zip(&redis.1).collect::<Vec<_>>()
        );
    }
    report("memory_hit (anchor: moka get)", memory_ops, &memory, 1.5);
    report(
        "redis_hit (anchor: fred GET + decode)",
        redis_ops,
        &redis,
        1.2,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--test" || a == "--list");
    if args.iter().any(|a| a == "--list") {
        println!("memory_hit: benchmark\nredis_hit: benchmark\nmiss: benchmark\nrounds: benchmark");
        return;
    }
    let only_rounds = args.iter().any(|a| a == "rounds");
    let mut rig = Rig::new();
    if !only_rounds && !quick {
        let mut criterion = Criterion::default()
            .configure_from_args()
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1));
        let mut group = criterion.benchmark_group("memory_hit");
        group.bench_function("tickbus_get", |b| {
            b.iter_custom(|iters| rig.tickbus_memory(iters as usize))
        });
        group.bench_function("moka_get", |b| {
            b.iter_custom(|iters| rig.moka_memory(iters as usize))
        });
        group.finish();
        let rig_cell = std::cell::RefCell::new(&mut rig);
        let mut group = criterion.benchmark_group("redis_hit");
        group.sample_size(10);
        group.bench_function("tickbus_get", |b| {
            b.iter_custom(|iters| rig_cell.borrow_mut().tickbus_redis(iters as usize))
        });
        group.bench_function("fred_get", |b| {
            b.iter_custom(|iters| rig_cell.borrow_mut().fred_redis(iters as usize))
        });
        group.finish();
        let mut group = criterion.benchmark_group("miss");
        group.bench_function("get_or_load_1", |b| {
            b.iter_custom(|iters| rig_cell.borrow_mut().tickbus_miss(iters as usize))
        });
        group.bench_function("get_or_load_8_coalesced", |b| {
            b.iter_custom(|iters| rig_cell.borrow_mut().tickbus_miss_coalesced(iters as usize))
        });
        group.finish();
        criterion.final_summary();
    }
    rounds(&mut rig, quick);
    rig.bus.shutdown();
}
