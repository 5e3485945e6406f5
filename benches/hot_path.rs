//! Cost of the protection path per provider call: the breaker and limiter decisions on their
//! own, and the same decisions through their actors (a call for the permit and a cast for the
//! outcome), against a bare no-op call measured in the same run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sandwarden::breaker::{Breaker, BreakerConfig};
use sandwarden::ratelimit::policy::{LimiterConfig, Operation, RateLimiter};

fn decisions(c: &mut Criterion) {
    let mut g = c.benchmark_group("decision");
    g.bench_function("bare_noop", |b| {
        b.iter(|| black_box(1u64) + black_box(2u64))
    });
    let mut breaker = Breaker::new(BreakerConfig::default());
    let mut now = 1_000_000u64;
    g.bench_function("breaker_acquire_record", |b| {
        b.iter(|| {
            now += 1;
            let p = breaker.try_acquire(now).unwrap();
            black_box(breaker.on_success(p, now));
        })
    });
    let mut limiter = RateLimiter::new(LimiterConfig {
        max_concurrent_sandboxes: None,
        min_create_interval: None,
        ..Default::default()
    });
    let mut t = 1_000_000u64;
    g.bench_function("limiter_acquire_tracked", |b| {
        b.iter(|| {
            t += 1;
            black_box(limiter.acquire(Operation::Run, Some("u"), t).is_granted());
        })
    });
    g.finish();
}

fn actors(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = sandwarden::store::Store::open(dir.path()).unwrap();
    let settings = sandwarden::Settings::with_data_dir(dir.path());
    let (link, limiter) = rt.block_on(async {
        let (sup, _) = ractor::Actor::spawn(None, Idle, ()).await.unwrap();
        let (link, _) = sandwarden::breaker::CircuitBreakerActor::start(
            sandwarden::breaker::BreakerArgs {
                provider: "bench".into(),
                settings: settings.breaker.clone(),
                store: store.clone(),
                metrics: Default::default(),
            },
            sup.get_cell(),
        )
        .await
        .unwrap();
        let (limiter, _) = sandwarden::ratelimit::RateLimiterActor::start(
            sandwarden::ratelimit::LimiterArgs {
                settings: settings.ratelimit.clone(),
                store: store.clone(),
                metrics: Default::default(),
            },
            sup.get_cell(),
        )
        .await
        .unwrap();
        (link, limiter)
    });
    let mut g = c.benchmark_group("actor");
    g.bench_function("bare_async_noop", |b| {
        b.to_async(&rt).iter(|| async { black_box(1) })
    });
    g.bench_function("breaker_permit_and_record", |b| {
        b.to_async(&rt).iter(|| async {
            let p = link.acquire().await.unwrap();
            link.record(p, Ok(()));
        })
    });
    g.bench_function("limiter_then_breaker", |b| {
        b.to_async(&rt).iter(|| async {
            limiter.acquire(Operation::Run, "u").await.unwrap();
            let p = link.acquire().await.unwrap();
            link.record(p, Ok(()));
        })
    });
    g.finish();
}

struct Idle;
impl ractor::Actor for Idle {
    type Msg = ();
    type State = ();
    type Arguments = ();
    async fn pre_start(
        &self,
        _: ractor::ActorRef<()>,
        _: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }
    async fn handle_supervisor_evt(
        &self,
        _: ractor::ActorRef<()>,
        _: ractor::SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = decisions, actors
}
criterion_main!(benches);
