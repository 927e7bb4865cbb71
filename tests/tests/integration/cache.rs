//! The read cache (`projections::cache`) against a private redis-server per
//! test: hits and misses, tag invalidation, stampedes, and Redis stopped,
//! hung, restarted and flushed. Every answer must come, and none that an
//! invalidation voided.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use projections::cache::{CacheConfig, CacheStatus, ReadCache};
use tests::PrivateRedis;

/// Generous: Redis is local, but the machine may be loaded, and a spurious
/// timeout would degrade the cache and fail tests that count loads.
fn config(redis: &PrivateRedis) -> CacheConfig {
    CacheConfig {
        url: Some(redis.url()),
        ttl_ms: 60_000,
        op_timeout_ms: 2_000,
        lock_ttl_ms: 30_000,
        lock_wait_ms: 30_000,
        recheck_interval_ms: 50,
        key_prefix: format!("t{}:", uuid::Uuid::new_v4().simple()),
        ..Default::default()
    }
}

/// For the outage tests: a short op timeout, so that a hung Redis is
/// noticed quickly.
fn outage_config(redis: &PrivateRedis) -> CacheConfig {
    CacheConfig {
        op_timeout_ms: 500,
        ..config(redis)
    }
}

fn tags(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

/// A loader that counts its calls and answers `<name>#<call>`.
#[derive(Clone, Default)]
struct Loader(Arc<AtomicUsize>);

impl Loader {
    fn calls(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    async fn load(&self, name: &str) -> Result<String, Infallible> {
        let call = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(format!("{name}#{call}"))
    }

    async fn get(&self, cache: &ReadCache, key: &str, tags: &[String]) -> String {
        match cache.get_or_load(key, tags, || self.load(key)).await {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }
}

async fn wait_for_status(cache: &ReadCache, wanted: CacheStatus) {
    for _ in 0..200 {
        if cache.status() == wanted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the cache did not become {wanted:?} within 10 s (it is {:?})",
        cache.status()
    );
}

async fn exists(redis: &PrivateRedis, key: &str) -> bool {
    let mut connection = redis.connection().await;
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(&mut connection)
        .await
        .unwrap()
        == 1
}

#[tokio::test]
async fn a_miss_loads_once_then_hits_until_the_entry_expires() {
    let redis = PrivateRedis::start().await;
    let cache = ReadCache::connect(config(&redis)).await;
    assert_eq!(cache.status(), CacheStatus::Healthy);
    let loader = Loader::default();
    let order = tags(&["order-1"]);

    assert_eq!(loader.get(&cache, "orders/1", &order).await, "orders/1#1");
    assert_eq!(loader.get(&cache, "orders/1", &order).await, "orders/1#1");
    assert_eq!(loader.get(&cache, "orders/1", &order).await, "orders/1#1");
    assert_eq!(loader.calls(), 1);
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.bypasses, stats.errors),
        (2, 1, 0, 0)
    );

    // an empty key and no tags are just another entry
    let empty = Loader::default();
    assert_eq!(empty.get(&cache, "", &[]).await, "#1");
    assert_eq!(empty.get(&cache, "", &[]).await, "#1");
    assert_eq!(empty.calls(), 1);

    let short = ReadCache::connect(CacheConfig {
        ttl_ms: 300,
        ..config(&redis)
    })
    .await;
    let expiring = Loader::default();
    assert_eq!(expiring.get(&short, "k", &order).await, "k#1");
    // the entry was stored before the call returned: 600 ms later it is gone
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(expiring.get(&short, "k", &order).await, "k#2");
    assert_eq!(expiring.calls(), 2);
}

#[tokio::test]
async fn invalidating_a_tag_voids_exactly_the_entries_that_depend_on_it() {
    let redis = PrivateRedis::start().await;
    let cache = ReadCache::connect(config(&redis)).await;
    let (a, b, both) = (Loader::default(), Loader::default(), Loader::default());
    let (one, two, one_two) = (
        tags(&["order-1"]),
        tags(&["order-2"]),
        tags(&["order-1", "order-2"]),
    );
    assert_eq!(a.get(&cache, "a", &one).await, "a#1");
    assert_eq!(b.get(&cache, "b", &two).await, "b#1");
    assert_eq!(both.get(&cache, "both", &one_two).await, "both#1");

    cache.invalidate(&one).await;

    assert_eq!(a.get(&cache, "a", &one).await, "a#2");
    assert_eq!(b.get(&cache, "b", &two).await, "b#1");
    assert_eq!(both.get(&cache, "both", &one_two).await, "both#2");
    // the reloaded answers are cached again
    assert_eq!(a.get(&cache, "a", &one).await, "a#2");
    assert_eq!(both.get(&cache, "both", &one_two).await, "both#2");

    // invalidating a tag nothing depends on, or none, changes nothing
    cache.invalidate(&tags(&["order-3"])).await;
    cache.invalidate(&[]).await;
    assert_eq!(a.get(&cache, "a", &one).await, "a#2");
    assert_eq!(cache.status(), CacheStatus::Healthy);
}

#[tokio::test]
async fn an_invalidation_during_a_load_makes_the_next_read_load_again() {
    let redis = PrivateRedis::start().await;
    let config = config(&redis);
    let cache = ReadCache::connect(config.clone()).await;
    // another server on the same Redis and prefix
    let other = ReadCache::connect(config).await;
    let order = tags(&["order-1"]);

    // The load reads the old state; the write commits and is invalidated
    // before the load's answer is stored.
    let first = cache
        .get_or_load("orders/1", &order, || async {
            other.invalidate(&order).await;
            Ok::<_, Infallible>("before the write".to_string())
        })
        .await
        .unwrap();
    assert_eq!(first, "before the write");

    let loader = Loader::default();
    assert_eq!(loader.get(&cache, "orders/1", &order).await, "orders/1#1");
    assert_eq!(loader.get(&other, "orders/1", &order).await, "orders/1#1");
    assert_eq!(loader.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_one_key_load_it_once() {
    let redis = PrivateRedis::start().await;
    let cache = ReadCache::connect(config(&redis)).await;
    let loads = Arc::new(AtomicUsize::new(0));
    let order = tags(&["order-1"]);
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let (cache, loads, order) = (cache.clone(), loads.clone(), order.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load("hot", &order, || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, Infallible>("the answer".to_string())
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), "the answer");
    }
    let loads = loads.load(Ordering::SeqCst);
    assert!(loads <= 2, "32 concurrent misses loaded {loads} times");
    let stats = cache.stats();
    assert_eq!(stats.hits + stats.misses, 32);
    assert_eq!(stats.misses as usize, loads);
    assert_eq!(cache.status(), CacheStatus::Healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_misses_stop_waiting_when_the_winner_stores_nothing() {
    let redis = PrivateRedis::start().await;
    // lock_wait_ms is 30 s: only the released lock can end the wait early
    let cache = ReadCache::connect(CacheConfig {
        value_bytes_max: 4,
        ..config(&redis)
    })
    .await;
    let loads = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (cache, loads) = (cache.clone(), loads.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load("big", &[], || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, Infallible>("too large".to_string())
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), "too large");
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(loads.load(Ordering::SeqCst), 8);
}

#[tokio::test]
async fn a_hung_redis_costs_one_op_timeout_and_entries_from_before_are_void_after_it() {
    let redis = PrivateRedis::start().await;
    let config = outage_config(&redis);
    let prefix = config.key_prefix.clone();
    let cache = ReadCache::connect(config).await;
    let (a, b) = (Loader::default(), Loader::default());
    let (one, two) = (tags(&["order-1"]), tags(&["order-2"]));
    assert_eq!(a.get(&cache, "a", &one).await, "a#1");
    assert_eq!(b.get(&cache, "b", &two).await, "b#1");
    assert_eq!(a.get(&cache, "a", &one).await, "a#1");

    // Connections stay open and nothing answers; the data survive.
    redis.freeze();
    for call in 2..=6 {
        let started = Instant::now();
        assert_eq!(a.get(&cache, "a", &one).await, format!("a#{call}"));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a call took {:?} with an op timeout of 500 ms",
            started.elapsed()
        );
    }
    assert_eq!(cache.status(), CacheStatus::Degraded);
    let stats = cache.stats();
    assert_eq!(stats.errors, 1, "only the first call asks the hung Redis");
    assert_eq!(stats.bypasses, 4);
    // lost: Redis never hears of it
    let started = Instant::now();
    cache.invalidate(&one).await;
    assert!(started.elapsed() < Duration::from_secs(3));

    redis.thaw();
    wait_for_status(&cache, CacheStatus::Healthy).await;
    assert!(
        exists(&redis, &format!("{prefix}entry:a")).await,
        "the entry cached before the outage is still in Redis"
    );
    // ...but it is not served: the lost invalidation is covered by the
    // epoch change, which voids every entry from before
    assert_eq!(a.get(&cache, "a", &one).await, "a#7");
    assert_eq!(b.get(&cache, "b", &two).await, "b#2");
    assert_eq!(a.get(&cache, "a", &one).await, "a#7");
    assert_eq!(b.get(&cache, "b", &two).await, "b#2");
}

#[tokio::test]
async fn a_stopped_redis_degrades_the_cache_and_a_restarted_one_heals_it() {
    let mut redis = PrivateRedis::start().await;
    let cache = ReadCache::connect(outage_config(&redis)).await;
    let loader = Loader::default();
    let order = tags(&["order-1"]);
    assert_eq!(loader.get(&cache, "k", &order).await, "k#1");
    assert_eq!(loader.get(&cache, "k", &order).await, "k#1");

    redis.stop().await;
    for call in 2..=11 {
        let started = Instant::now();
        assert_eq!(loader.get(&cache, "k", &order).await, format!("k#{call}"));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a call took {:?} with Redis down",
            started.elapsed()
        );
    }
    assert_eq!(cache.status(), CacheStatus::Degraded);
    cache.invalidate(&order).await;

    redis.restart().await;
    wait_for_status(&cache, CacheStatus::Healthy).await;
    assert_eq!(loader.get(&cache, "k", &order).await, "k#12");
    assert_eq!(loader.get(&cache, "k", &order).await, "k#12");
    cache.invalidate(&order).await;
    assert_eq!(loader.get(&cache, "k", &order).await, "k#13");
}

#[tokio::test]
async fn a_cache_started_without_redis_answers_and_heals_when_redis_comes() {
    let mut redis = PrivateRedis::start().await;
    redis.stop().await;
    let started = Instant::now();
    let cache = ReadCache::connect(outage_config(&redis)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(cache.status(), CacheStatus::Degraded);
    let loader = Loader::default();
    assert_eq!(loader.get(&cache, "k", &[]).await, "k#1");
    assert_eq!(loader.get(&cache, "k", &[]).await, "k#2");
    assert_eq!(cache.stats().bypasses, 2);

    redis.restart().await;
    wait_for_status(&cache, CacheStatus::Healthy).await;
    assert_eq!(loader.get(&cache, "k", &[]).await, "k#3");
    assert_eq!(loader.get(&cache, "k", &[]).await, "k#3");
}

#[tokio::test]
async fn a_flushed_redis_gives_misses_not_wrong_answers() {
    let redis = PrivateRedis::start().await;
    let config = config(&redis);
    let prefix = config.key_prefix.clone();
    let cache = ReadCache::connect(config).await;
    let loader = Loader::default();
    let order = tags(&["order-1"]);
    let mut connection = redis.connection().await;
    let flusher = connection.clone();
    let flush = || {
        let mut connection = flusher.clone();
        async move {
            redis::cmd("FLUSHALL")
                .query_async::<()>(&mut connection)
                .await
                .unwrap()
        }
    };
    assert_eq!(loader.get(&cache, "k", &order).await, "k#1");
    assert_eq!(loader.get(&cache, "k", &order).await, "k#1");

    flush().await;
    assert_eq!(loader.get(&cache, "k", &order).await, "k#2");
    assert_eq!(loader.get(&cache, "k", &order).await, "k#2");
    cache.invalidate(&order).await;
    assert_eq!(loader.get(&cache, "k", &order).await, "k#3");

    // A tag's version lost alone (eviction): the entries recorded under
    // it are misses, and a later invalidation cannot revive them.
    redis::cmd("DEL")
        .arg(format!("{prefix}tag:order-1"))
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    assert_eq!(loader.get(&cache, "k", &order).await, "k#4");
    assert_eq!(loader.get(&cache, "k", &order).await, "k#4");
    cache.invalidate(&order).await;
    assert_eq!(loader.get(&cache, "k", &order).await, "k#5");

    // A flush and an invalidation while loading: what was loaded before
    // them is not served after them.
    cache.invalidate(&order).await;
    let during = cache
        .get_or_load("k", &order, || async {
            flush().await;
            cache.invalidate(&order).await;
            Ok::<_, Infallible>("before the write".to_string())
        })
        .await
        .unwrap();
    assert_eq!(during, "before the write");
    assert_eq!(loader.get(&cache, "k", &order).await, "k#6");
    assert_eq!(loader.get(&cache, "k", &order).await, "k#6");
    assert_eq!(cache.status(), CacheStatus::Healthy);
}

#[tokio::test]
async fn answers_over_the_size_limit_and_failed_loads_are_not_stored() {
    let redis = PrivateRedis::start().await;
    let config = CacheConfig {
        value_bytes_max: 16,
        ..config(&redis)
    };
    let prefix = config.key_prefix.clone();
    let cache = ReadCache::connect(config).await;
    let loads = AtomicUsize::new(0);
    let load = |value: &'static str| {
        loads.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Infallible>(value.to_string()) }
    };

    let large = "seventeen bytes!!";
    assert_eq!(
        cache.get_or_load("large", &[], || load(large)).await.unwrap(),
        large
    );
    assert_eq!(
        cache.get_or_load("large", &[], || load(large)).await.unwrap(),
        large
    );
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    assert!(!exists(&redis, &format!("{prefix}entry:large")).await);

    let limit = "sixteen bytes!!!";
    assert_eq!(
        cache.get_or_load("limit", &[], || load(limit)).await.unwrap(),
        limit
    );
    assert_eq!(
        cache.get_or_load("limit", &[], || load(limit)).await.unwrap(),
        limit
    );
    assert_eq!(loads.load(Ordering::SeqCst), 3);

    let failed: Result<String, &str> = cache
        .get_or_load("failing", &[], || async { Err("database down") })
        .await;
    assert_eq!(failed, Err("database down"));
    assert!(!exists(&redis, &format!("{prefix}entry:failing")).await);
    // the failed winner released its lock: the next call does not wait
    let started = Instant::now();
    let loader = Loader::default();
    assert_eq!(loader.get(&cache, "failing", &[]).await, "failing#1");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(cache.status(), CacheStatus::Healthy);
}

#[tokio::test]
async fn a_disabled_cache_always_loads() {
    for cache in [
        ReadCache::disabled(),
        ReadCache::connect(CacheConfig::default()).await,
    ] {
        assert_eq!(cache.status(), CacheStatus::Disabled);
        let loader = Loader::default();
        let order = tags(&["order-1"]);
        assert_eq!(loader.get(&cache, "k", &order).await, "k#1");
        assert_eq!(loader.get(&cache, "k", &order).await, "k#2");
        cache.invalidate(&order).await;
        assert_eq!(loader.get(&cache, "k", &order).await, "k#3");
        let stats = cache.stats();
        assert_eq!(
            (stats.hits, stats.misses, stats.bypasses, stats.errors),
            (0, 0, 3, 0)
        );
        assert_eq!(cache.status(), CacheStatus::Disabled);
    }
}

#[tokio::test]
async fn tag_versions_expire_but_the_epoch_does_not_and_an_expired_version_never_serves_stale() {
    let redis = PrivateRedis::start().await;
    let config = config(&redis);
    let prefix = config.key_prefix.clone();
    let cache = ReadCache::connect(config).await;
    let loader = Loader::default();
    let row = tags(&["row:1"]);
    assert_eq!(loader.get(&cache, "k", &row).await, "k#1");
    cache.invalidate(&row).await;
    let mut connection = redis.connection().await;
    let pttl = |key: String| {
        let mut command = redis::cmd("PTTL");
        command.arg(key);
        command
    };
    let tag_ttl: i64 = pttl(format!("{prefix}tag:row:1"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(tag_ttl > 0, "a tag version has a lifetime (PTTL {tag_ttl})");
    let epoch_ttl: i64 = pttl(format!("{prefix}epoch"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(epoch_ttl, -1, "the epoch never expires");
    // An expired version (deleted here) comes back fresh: a miss, not the old value.
    assert_eq!(loader.get(&cache, "k", &row).await, "k#2");
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}tag:row:1"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(loader.get(&cache, "k", &row).await, "k#3");
    assert_eq!(loader.get(&cache, "k", &row).await, "k#3");
}
