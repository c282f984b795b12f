//! The tiered cache in front of a slow API: two instances (two buses, two
//! connections, as two processes would have) look up LLM labels for events
//! whose popularity follows a Zipf law, through one `event_label` namespace.
//!
//! ```text
//! cargo run --release --example tiered_cache -- --redis redis://127.0.0.1:6379
//! ```
//!
//! The loader stands for the LLM: it takes 50 ms. The run prints the share of
//! lookups answered by each layer, the loader calls, and the time the cache
//! saved (loader time not spent). It clears the namespace first and last, so
//! run it against a Redis whose `tickbus:cache:event_label:*` keys are yours.
//!
//! Options: `--lookups N` (10 000), `--keys N` (2 000 distinct events),
//! `--zipf S` (1.1), `--concurrency N` (64 lookups in flight per instance).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use clap::Parser;
use tickbus::cache::{Cache, CacheConfig, CacheStats};
use tickbus::{Bus, RedisConfig};

const LOADER_TIME: Duration = Duration::from_millis(50);

/// Two instances look up labels through one tiered cache in front of a 50 ms loader.
#[derive(Parser)]
struct Options {
    /// The Redis of the cache's second layer (its `tickbus:cache:event_label:*`
    /// keys are cleared first and last).
    #[arg(long, value_name = "URL")]
    redis: String,
    /// How many lookups, over both instances.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    lookups: u64,
    /// How many distinct events (keys).
    #[arg(long, value_name = "N", default_value_t = 2_000, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    keys: usize,
    /// The Zipf exponent of the keys' popularity.
    #[arg(long, value_name = "S", default_value_t = 1.1, value_parser = positive)]
    zipf: f64,
    /// Lookups in flight per instance.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    concurrency: usize,
}

/// A float above zero (clap's ranged parsers are for integers).
fn positive(text: &str) -> Result<f64, String> {
    match text.parse() {
        Ok(s) if s > 0.0 => Ok(s),
        Ok(_) => Err("must be above zero".into()),
        Err(e) => Err(format!("{e}")),
    }
}

/// Samples key ranks 0..n with P(k) ∝ 1 / (k + 1)^s (inverse CDF, binary search).
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 0..n {
            total += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(total);
        }
        for p in &mut cdf {
            *p /= total;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut fastrand::Rng) -> usize {
        let u = rng.f64();
        self.cdf.partition_point(|&p| p < u).min(self.cdf.len() - 1)
    }
}

fn main() {
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(error) = runtime.block_on(run(&options)) {
        eprintln!("tiered_cache: {error}");
        std::process::exit(1);
    }
}

async fn run(options: &Options) -> tickbus::Result<()> {
    let config = RedisConfig::from_url(&options.redis)?;
    let buses = [
        Bus::builder().redis(config.clone()).build()?,
        Bus::builder().redis(config).build()?,
    ];
    let caches: Vec<Cache<String>> = buses
        .iter()
        .map(|bus| bus.cache::<String>("event_label", CacheConfig::event_label()))
        .collect::<tickbus::Result<_>>()?;
    caches[0].invalidate_namespace().await?;

    let zipf = Arc::new(Zipf::new(options.keys, options.zipf));
    let issued = Arc::new(AtomicU64::new(0));
    let loader_calls = Arc::new(AtomicU64::new(0));
    let distinct = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for (instance, cache) in caches.iter().enumerate() {
        for worker in 0..options.concurrency {
            let (cache, zipf, issued, calls, distinct) = (
                cache.clone(),
                Arc::clone(&zipf),
                Arc::clone(&issued),
                Arc::clone(&loader_calls),
                Arc::clone(&distinct),
            );
            let lookups = options.lookups;
            let seed = (instance * 10_000 + worker) as u64;
            workers.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed);
                while issued.fetch_add(1, Ordering::Relaxed) < lookups {
                    let rank = zipf.sample(&mut rng);
                    distinct.lock().unwrap().insert(rank);
                    let event = format!("evt-{rank}");
                    let calls = Arc::clone(&calls);
                    let label = cache
                        .get_or_load(&event, |event| async move {
                            calls.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(LOADER_TIME).await; // the LLM
                            Ok::<_, std::convert::Infallible>(format!("label for {event}"))
                        })
                        .await?;
                    assert!(label.ends_with(&event), "a label for another event");
                }
                Ok::<_, tickbus::Error>(())
            }));
        }
    }
    for worker in workers {
        worker.await.expect("a lookup task panicked")?;
    }
    let elapsed = started.elapsed();

    let stats: Vec<CacheStats> = caches.iter().map(Cache::stats).collect();
    let sum = |f: fn(&CacheStats) -> u64| stats.iter().map(f).sum::<u64>();
    let lookups = options.lookups;
    let memory = sum(|s| s.memory_hits);
    let redis = sum(|s| s.redis_hits);
    let loads = loader_calls.load(Ordering::Relaxed);
    let waits = sum(|s| s.lock_waits);
    let distinct = distinct.lock().unwrap().len();
    let ratio = |n: u64| n as f64 / lookups as f64;
    println!(
        "two instances, {lookups} lookups of {} Zipf({}) keys, {} in flight each, loader {LOADER_TIME:?}",
        options.keys, options.zipf, options.concurrency
    );
    for (i, s) in stats.iter().enumerate() {
        println!(
            "  instance {i}: memory hits {}, redis hits {}, loads {}, waited for the other's load {}, invalidations {}",
            s.memory_hits, s.redis_hits, s.loads, s.lock_waits, s.invalidations
        );
    }
    println!(
        "layers: memory {:.1}%, redis {:.1}%, loader {:.1}% (lookups sharing an in-process load are counted with the loader)",
        100.0 * ratio(memory),
        100.0 * ratio(redis),
        100.0 * (1.0 - ratio(memory) - ratio(redis))
    );
    let saved = LOADER_TIME * u32::try_from(lookups.saturating_sub(loads)).unwrap_or(u32::MAX);
    println!(
        "loader calls {loads} for {distinct} distinct keys (cross-instance waits {waits}); wall time {:.2} s; loader time saved {:.1} s",
        elapsed.as_secs_f64(),
        saved.as_secs_f64()
    );
    caches[0].invalidate_namespace().await?;
    for bus in &buses {
        bus.shutdown();
    }
    println!(
        "lookups={lookups} memory_hits={memory} redis_hits={redis} loader_calls={loads} distinct_keys={distinct} saved_s={:.1}",
        saved.as_secs_f64()
    );
    Ok(())
}
