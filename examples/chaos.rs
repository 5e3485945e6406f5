//! The chaos suite at full size (see `sandwarden::chaos`): the same faults, outage and arrival
//! rate against the full protection and the two baselines, one after the other, in one run.
//!
//! `cargo run --release --example chaos [jobs]` (default 1,000 jobs at 10/s with a 60 s
//! outage); `bench/chaos.sh` runs it.

use sandwarden::chaos::{ChaosPlan, ChaosReport, run};
use sandwarden::config::Protection;

#[tokio::main]
async fn main() {
    let jobs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("jobs must be a number"))
        .unwrap_or(1000);
    let mut rows = Vec::new();
    for protection in [Protection::Full, Protection::RetryOnly, Protection::None] {
        let plan = ChaosPlan {
            jobs,
            ..ChaosPlan::full(protection)
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        eprintln!(
            "running {} jobs at {}/s with protection {} ...",
            plan.jobs,
            plan.rate_per_sec,
            protection.as_str()
        );
        let report = run(&plan, dir.path()).await.expect("the chaos run");
        eprintln!("{}\n{}", ChaosReport::HEADER, report.row());
        eprintln!(
            "  failed by category: {:?}\n  calls by endpoint: {:?}",
            report.by_error, report.calls_by_endpoint
        );
        rows.push(report);
    }
    let plan = ChaosPlan::full(Protection::Full);
    println!(
        "\nchaos: {} jobs at {}/s, {:.0} % 503, {:.0} % 429 (Retry-After {} s), a {} s outage at {} s",
        jobs,
        plan.rate_per_sec,
        plan.error_rate * 100.0,
        plan.rate_limit_rate * 100.0,
        plan.retry_after_secs,
        plan.outage_for.as_secs(),
        plan.outage_at.as_secs()
    );
    println!("{}", ChaosReport::HEADER);
    for r in &rows {
        println!("{}", r.row());
    }
    let full = &rows[0];
    println!(
        "full protection: lost {} (target 0), completed {:.1} % (target >= 99.9 %), {:.2} calls per needed call (target <= 1.5)",
        full.lost,
        full.completed_ratio() * 100.0,
        full.call_amplification()
    );
}
