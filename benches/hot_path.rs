//! Cost of the protection path per provider call, against the same no-op call bare and through
//! an equivalent tower stack (rate limit + retry + timeout), measured in the same run.
//!
//! - `decision/*`: the breaker and limiter decisions on their own (plain types, no actors);
//! - `call/*`: one `run` on the no-op provider, N calls in a loop on one task, bare, through
//!   tower, and through `pool::protected_call` (the function the worker calls for every
//!   provider call) with the limiter told by a cast (`run` unlimited, the default) or deciding
//!   under its lock on the caller's thread (`run` limited).
//!
//! Criterion reports means; the tail (p99 per call) is printed by
//! `cargo run --release --example protection_latency`, which runs the same three variants.

#[path = "support/protection.rs"]
mod protection;

use std::hint::black_box;
use std::time::{Duration, Instant};

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

fn calls(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rig = rt.block_on(protection::Rig::start());
    let rig = &rig;
    let mut g = c.benchmark_group("call");
    // Each sample is one loop of `iters` calls on one task, so the per-iteration cost of
    // entering the runtime is not part of any variant.
    g.bench_function("bare", |b| {
        b.to_async(&rt).iter_custom(move |iters| async move {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(rig.bare().await);
            }
            start.elapsed()
        })
    });
    g.bench_function("tower_ratelimit_retry_timeout", |b| {
        b.to_async(&rt).iter_custom(move |iters| async move {
            let mut stack = rig.tower();
            let start = Instant::now();
            for _ in 0..iters {
                black_box(stack.call().await);
            }
            start.elapsed()
        })
    });
    g.bench_function("sandwarden_unlimited_op", |b| {
        b.to_async(&rt).iter_custom(move |iters| async move {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(rig.sandwarden(&rig.unlimited).await);
            }
            start.elapsed()
        })
    });
    g.bench_function("sandwarden_limited_op", |b| {
        b.to_async(&rt).iter_custom(move |iters| async move {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(rig.sandwarden(&rig.limited).await);
            }
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = decisions, calls
}
criterion_main!(benches);
