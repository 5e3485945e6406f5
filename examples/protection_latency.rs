//! The tail of the protection path per provider call: the hot-path benchmark's variants (bare,
//! tower rate limit + retry + timeout, sandwarden's `pool::protected_call` with an operation the
//! limiter cannot refuse (tracked by a cast) or a limited one (decided under the limiter's lock
//! on the caller's thread)), each call timed on its own, in the same run. Criterion gives
//! means; the target of issue 9 is on the p99 (at most 20 µs per call).
//!
//! The variants take turns in rounds, so that a noisy moment on a shared machine falls on all
//! of them rather than on one. Per-call times include one `Instant::now()` pair, the same for
//! every variant.
//!
//! `cargo run --release --example protection_latency -- [CALLS_PER_VARIANT]` (default 200000).

#[path = "../benches/support/protection.rs"]
mod protection;
#[path = "../benches/support/stats.rs"]
mod stats;

use std::time::{Duration, Instant};

const ROUNDS: usize = 20;
const NAMES: [&str; 4] = [
    "bare",
    "tower (rate limit + retry + timeout)",
    "sandwarden, op unlimited (limiter cast)",
    "sandwarden, op limited (decided inline)",
];

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let calls: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .filter(|n| *n >= ROUNDS)
        .unwrap_or(200_000);
    let per_round = calls / ROUNDS;
    let rig = protection::Rig::start().await;
    let mut stack = rig.tower();
    let mut times: [Vec<Duration>; 4] = Default::default();
    for t in &mut times {
        t.reserve(per_round * ROUNDS);
    }

    // One untimed round first: allocations, lazily created metric series, actor start-up.
    for _ in 0..per_round {
        rig.bare().await;
        stack.call().await;
        rig.sandwarden(&rig.unlimited).await;
        rig.sandwarden(&rig.limited).await;
    }
    for _ in 0..ROUNDS {
        for (variant, out) in times.iter_mut().enumerate() {
            for _ in 0..per_round {
                let start = Instant::now();
                match variant {
                    0 => drop(std::hint::black_box(rig.bare().await)),
                    1 => drop(std::hint::black_box(stack.call().await)),
                    2 => drop(std::hint::black_box(rig.sandwarden(&rig.unlimited).await)),
                    _ => drop(std::hint::black_box(rig.sandwarden(&rig.limited).await)),
                }
                out.push(start.elapsed());
            }
        }
    }

    println!(
        "protection path per provider call: {} calls per variant in {ROUNDS} interleaved rounds, {} cores",
        per_round * ROUNDS,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<42} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "variant", "mean µs", "p50 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    let mut p99 = [Duration::ZERO; 4];
    for (i, t) in times.iter_mut().enumerate() {
        t.sort_unstable();
        let mean = t.iter().sum::<Duration>() / t.len() as u32;
        p99[i] = stats::percentile(t, 99.0);
        println!(
            "{:<42} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.1}",
            NAMES[i],
            us(mean),
            us(stats::percentile(t, 50.0)),
            us(p99[i]),
            us(stats::percentile(t, 99.9)),
            us(*t.last().expect("calls were timed")),
        );
    }
    for (i, name) in NAMES.iter().enumerate().skip(2) {
        println!(
            "p99 ratio {name}: {:.1}x bare, {:.2}x tower; target p99 <= 20 µs: {}",
            p99[i].as_secs_f64() / p99[0].as_secs_f64(),
            p99[i].as_secs_f64() / p99[1].as_secs_f64(),
            if us(p99[i]) <= 20.0 { "met" } else { "missed" }
        );
    }
}
