//! Measures one create + run + read + kill cycle through `E2bProvider` against an in-process
//! emulator on loopback, and prints min/median/p90/max over N cycles.
//!
//! Usage: `cargo run --release --example cycle_timing -- [N]` (default 30). It only talks to
//! 127.0.0.1 and removes its temporary data directory on exit.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sandwarden::emulator::{Emulator, EmulatorConfig};
use sandwarden::provider::e2b::{E2bConfig, E2bProvider};
use sandwarden::provider::{Provider, RunSpec, SandboxSpec};

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let dir = tempfile_dir();
    let key = "e2b_00ff".to_string();
    let emu = Emulator::start(EmulatorConfig {
        listen: "127.0.0.1:0".parse().expect("loopback address parses"),
        data_dir: dir.clone(),
        api_key: Some(key.clone()),
    })
    .await
    .expect("emulator starts");
    let p = E2bProvider::new(E2bConfig {
        api_url: emu.base_url(),
        sandbox_url: Some(emu.base_url()),
        api_key: key,
        instance: "timing".to_string(),
        ..E2bConfig::default()
    })
    .expect("provider builds");
    let spec = SandboxSpec {
        template: "base".to_string(),
        timeout: Duration::from_secs(60),
        env: BTreeMap::new(),
        metadata: BTreeMap::new(),
        network: sandwarden::provider::Network::Host,
    };
    let run = RunSpec {
        cmd: "echo hi > out.txt; echo done".to_string(),
        timeout: Duration::from_secs(10),
        env: BTreeMap::new(),
        max_output: 1 << 20,
    };
    let mut times = Vec::with_capacity(n);
    // Per phase: create, run, read, kill.
    let mut phases: [Vec<Duration>; 4] = Default::default();
    for _ in 0..n {
        let t = Instant::now();
        let id = p.create(&spec).await.expect("create");
        let t1 = Instant::now();
        let out = p.run(&id, &run).await.expect("run");
        assert_eq!(out.stdout, "done\n");
        let t2 = Instant::now();
        let got = p.read_file(&id, "out.txt", 1024).await.expect("read");
        assert_eq!(got, b"hi\n");
        let t3 = Instant::now();
        p.kill(&id).await.expect("kill");
        let t4 = Instant::now();
        for (i, d) in [t1 - t, t2 - t1, t3 - t2, t4 - t3].into_iter().enumerate() {
            phases[i].push(d);
        }
        times.push(t.elapsed());
    }
    for (name, mut v) in ["create", "run", "read", "kill"].into_iter().zip(phases) {
        v.sort();
        println!("  {name}: median={:?}", v[v.len() / 2]);
    }
    times.sort();
    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "cycles={n} min={:?} median={:?} p90={:?} max={:?}",
        times[0],
        pick(0.5),
        pick(0.9),
        times[times.len() - 1]
    );
    emu.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("e2b-cycle-timing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
