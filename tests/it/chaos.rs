//! The chaos suite at a small size: the runtime on the e2b provider against the emulator with
//! 20 % 503s, 5 % 429s with Retry-After and one full outage, jobs arriving at a steady rate.
//! Full size: `bench/chaos.sh`.

use sandwarden::chaos::{ChaosPlan, ChaosReport, run};
use sandwarden::config::Protection;

async fn chaos(protection: Protection) -> ChaosReport {
    let dir = tempfile::tempdir().unwrap();
    let report = run(&ChaosPlan::small(protection), dir.path())
        .await
        .unwrap();
    eprintln!("{}\n{}", ChaosReport::HEADER, report.row());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_protection_loses_nothing_and_completes_every_job_through_faults_and_an_outage() {
    let r = chaos(Protection::Full).await;
    assert_eq!(r.accepted, ChaosPlan::small(Protection::Full).jobs);
    assert_eq!(r.lost, 0, "{r:?}");
    assert_eq!(r.unfinished, 0, "{r:?}");
    assert_eq!(r.completed, r.accepted, "every job completes: {r:?}");
    // The target, 1.5, is for the full size (bench/chaos.sh: 1.40); at this size the outage's
    // fixed cost weighs more and runs vary from 1.35 to 1.49, so the guard has a margin. It
    // still catches the look-before-create and replace-on-one-failed-health-check waste (1.8).
    assert!(
        r.call_amplification() <= 1.6,
        "{:.2} provider calls per needed call: {r:#?}",
        r.call_amplification()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_protection_jobs_fail_where_the_full_protection_completes_them() {
    let r = chaos(Protection::None).await;
    assert_eq!(r.lost, 0, "{r:?}");
    assert_eq!(r.unfinished, 0, "{r:?}");
    assert_eq!(r.completed + r.failed, r.accepted);
    // One try per call, 25 % of calls failing, several calls a job, and an outage: most fail.
    assert!(
        r.completed_ratio() < 0.9,
        "completed {:.2}: {r:?}",
        r.completed_ratio()
    );
    assert!(r.failed > 0 && r.by_error.values().sum::<usize>() == r.failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_only_survives_the_faults_but_not_the_outage() {
    let r = chaos(Protection::RetryOnly).await;
    assert_eq!(r.lost, 0, "{r:?}");
    assert_eq!(r.unfinished, 0, "{r:?}");
    // Jobs running during the outage exhaust their three retries and fail.
    assert!(r.failed > 0, "{r:?}");
    assert!(r.completed_ratio() < 1.0);
}
