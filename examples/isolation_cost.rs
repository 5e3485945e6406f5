//! Start-up cost of a local `run` step with and without namespace isolation, and with a cgroup
//! of its own where cgroups work here, measured in the same run: median of 20 runs of `true`
//! each, after a warm-up.
//!
//! `cargo run --release --example isolation_cost`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sandwarden::provider::RunSpec;
use sandwarden::provider::cgroups::Cgroups;
use sandwarden::provider::isolation::{Confinement, Isolation, Network};
use sandwarden::provider::local::{LocalLimits, run_in};

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let limits = LocalLimits::default();
    let spec = RunSpec {
        cmd: "true".into(),
        timeout: Duration::from_secs(10),
        env: BTreeMap::new(),
        max_output: 4096,
    };
    let cgroups = match Cgroups::detect() {
        Ok(c) => Some(c),
        Err(why) => {
            println!("no cgroups here: {why}");
            None
        }
    };
    let none = Confinement::default();
    let host = Confinement {
        network: Network::Host,
        ..Confinement::default()
    };
    let mut medians = Vec::new();
    let mut cases = vec![
        ("unisolated", Isolation::none(), &none, None),
        ("namespaces", Isolation::namespaces_unchecked(), &none, None),
        (
            "namespaces+host-net",
            Isolation::namespaces_unchecked(),
            &host,
            None,
        ),
    ];
    if cgroups.is_some() {
        cases.push((
            "namespaces+cgroup",
            Isolation::namespaces_unchecked(),
            &none,
            cgroups.as_ref(),
        ));
    }
    for (name, iso, confine, cg) in cases {
        run_in(dir.path(), &limits, &iso, confine, cg, &spec, |_| {})
            .await
            .unwrap();
        let mut times = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let out = run_in(dir.path(), &limits, &iso, confine, cg, &spec, |_| {})
                .await
                .unwrap();
            assert_eq!(out.exit_code, 0);
            times.push(t.elapsed());
        }
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "{name:>20}: median {median:?} (min {:?}, max {:?})",
            times[0],
            times[times.len() - 1]
        );
        medians.push(median);
    }
    println!(
        "isolated / unisolated: {:.1}x",
        medians[1].as_secs_f64() / medians[0].as_secs_f64()
    );
}
