//! Real processes: hostile commands against the namespace isolation of the local provider.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandwarden::provider::isolation::{self, Isolation, Network};
use sandwarden::provider::local::{LocalLimits, LocalProvider};
use sandwarden::provider::{
    ErrorCategory, Provider, ProviderError, RunOutput, RunSpec, SandboxSpec,
};

struct Fixture {
    _base: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    provider: LocalProvider,
    sandbox: String,
}

async fn fixture_with(limits: LocalLimits, network: Network) -> Fixture {
    let base = tempfile::tempdir().unwrap();
    let basep = base.path().to_path_buf();
    // Stand-ins for the service's data dir contents / other sandboxes: siblings of the sandbox.
    std::fs::write(basep.join("secret.txt"), "TOP-SECRET-SIBLING").unwrap();
    let root = basep.join("sandboxes");
    let provider = LocalProvider::new(&root, limits)
        .unwrap()
        .with_isolation(Isolation::namespaces_unchecked());
    let sandbox = provider
        .create(&SandboxSpec { network, ..spec() })
        .await
        .unwrap();
    Fixture {
        _base: base,
        base: basep,
        root,
        provider,
        sandbox,
    }
}

async fn fixture() -> Fixture {
    fixture_with(LocalLimits::default(), Network::None).await
}

fn spec() -> SandboxSpec {
    SandboxSpec {
        template: "base".into(),
        timeout: Duration::from_secs(60),
        env: BTreeMap::new(),
        metadata: BTreeMap::new(),
        network: Network::None,
    }
}

fn run_spec(cmd: &str, timeout: Duration) -> RunSpec {
    RunSpec {
        cmd: cmd.into(),
        timeout,
        env: BTreeMap::new(),
        max_output: 1 << 20,
    }
}

impl Fixture {
    async fn run(&self, cmd: &str) -> Result<RunOutput, ProviderError> {
        self.run_t(cmd, Duration::from_secs(30)).await
    }
    async fn run_t(&self, cmd: &str, t: Duration) -> Result<RunOutput, ProviderError> {
        self.provider.run(&self.sandbox, &run_spec(cmd, t)).await
    }
    fn dir(&self) -> PathBuf {
        self.root.join(&self.sandbox)
    }
}

fn ok(r: Result<RunOutput, ProviderError>) -> RunOutput {
    match r {
        Ok(o) => o,
        Err(e) => panic!("command failed: {e:?}"),
    }
}

/// Pids of host processes whose command line contains `needle`.
fn procs_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            let s = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if s.contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

#[test]
fn probe_reports_working_isolation() {
    let p = isolation::probe();
    eprintln!("{p:#?}");
    assert!(p.user_ns && p.mount_ns && p.pid_ns && p.net_ns, "{p:?}");
    assert!(p.full && p.nproc_limit, "{p:?}");
    assert_eq!(p.mechanism, "unshare");
    assert!(p.problems.is_empty(), "{p:?}");
}

#[tokio::test]
async fn positive_basics() {
    let f = fixture().await;
    let o = ok(f.run("echo hi > f; cat f; pwd; echo HOME=$HOME").await);
    assert_eq!(o.exit_code, 0, "{o:?}");
    assert_eq!(o.stdout, "hi\n/home/user\nHOME=/home/user\n");
    // Host-side file access still works on the sandbox directory.
    assert_eq!(std::fs::read(f.dir().join("f")).unwrap(), b"hi\n");
    assert_eq!(
        f.provider
            .read_file(&f.sandbox, "/home/user/f", 100)
            .await
            .unwrap(),
        b"hi\n"
    );

    let o = ok(f.run("echo out > /dev/stdout; echo err | tee /dev/stderr >/dev/null; echo tty; ls -l /dev/null").await);
    assert_eq!(o.stdout.lines().next(), Some("out"), "{o:?}");
    assert_eq!(o.stderr, "err\n", "{o:?}");

    let o = ok(f.run("ls /usr/bin").await);
    assert_eq!(o.exit_code, 0, "{o:?}");
    assert!(o.stdout.lines().any(|l| l == "ls"), "{o:?}");

    let o = ok(f.run("python3 -c 'print(1)'").await);
    assert_eq!((o.exit_code, o.stdout.as_str()), (0, "1\n"), "{o:?}");

    // A file written by the service can be modified by the sandbox, and the reverse.
    f.provider
        .write_file(&f.sandbox, "dir/sub/a.txt", b"one\n")
        .await
        .unwrap();
    let o = ok(f.run("echo two >> dir/sub/a.txt && mkdir -p dir/sub/new && echo three > dir/sub/new/b && rm dir/sub/a.txt && echo again > dir/sub/a.txt").await);
    assert_eq!(o.exit_code, 0, "{o:?}");
    assert_eq!(
        f.provider
            .read_file(&f.sandbox, "dir/sub/new/b", 100)
            .await
            .unwrap(),
        b"three\n"
    );
}

#[tokio::test]
async fn node_works_if_installed() {
    if !Path::new("/usr/bin/node").exists() {
        eprintln!("no /usr/bin/node; skipped");
        return;
    }
    let f = fixture().await; // default limits: 4 GiB address space
    let o = ok(f.run("node -e 'console.log(1+1)'").await);
    assert_eq!((o.exit_code, o.stdout.as_str()), (0, "2\n"), "{o:?}");
}

#[tokio::test]
async fn environment_is_only_the_jobs() {
    let f = fixture().await;
    let mut spec = run_spec("env | sort", Duration::from_secs(10));
    spec.env.insert("JOB_VAR".into(), "x y".into());
    let o = ok(f.provider.run(&f.sandbox, &spec).await);
    let keys: Vec<&str> = o
        .stdout
        .lines()
        .map(|l| l.split('=').next().unwrap())
        .collect();
    assert_eq!(keys, ["HOME", "JOB_VAR", "LANG", "PATH", "PWD"], "{o:?}");
    assert!(o.stdout.contains("JOB_VAR=x y\n"));
}

#[tokio::test]
async fn host_passwd_is_not_visible() {
    let f = fixture().await;
    let host = std::fs::read_to_string("/etc/passwd").unwrap();
    let o = ok(f.run("cat /etc/passwd; ls /etc").await);
    assert_eq!(o.exit_code, 0, "{o:?}");
    assert_ne!(o.stdout, host);
    for line in host.lines() {
        let user = line.split(':').next().unwrap();
        if user != "root" && user != "nobody" {
            assert!(
                !o.stdout.contains(&format!("{user}:x:")),
                "{user} leaked: {o:?}"
            );
        }
    }
    assert!(!o.stdout.contains("shadow"), "{o:?}");
}

#[tokio::test]
async fn siblings_and_other_sandboxes_are_not_visible() {
    let f = fixture().await;
    let other = f.provider.create(&spec()).await.unwrap();
    f.provider
        .write_file(&other, "mine.txt", b"OTHER-SANDBOX-DATA")
        .await
        .unwrap();
    let secret = f.base.join("secret.txt");
    let other_file = f.root.join(&other).join("mine.txt");
    let cmd = format!(
        "cat {} {} ../secret.txt ../../secret.txt ../{other}/mine.txt /proc/1/root{} 2>&1; ls -a .. / /home 2>&1; find / -name 'secret.txt' -o -name 'mine.txt' -o -name 'sbx-*' 2>/dev/null",
        secret.display(),
        other_file.display(),
        secret.display(),
    );
    let o = ok(f.run(&cmd).await);
    assert!(!o.stdout.contains("TOP-SECRET-SIBLING"), "{o:?}");
    assert!(!o.stdout.contains("OTHER-SANDBOX-DATA"), "{o:?}");
    // `ls` and `find` show neither sandbox directory.
    assert!(
        !o.stdout
            .lines()
            .any(|l| l.contains(&other) && !l.starts_with("cat:")),
        "{o:?}"
    );
    assert!(!o.stdout.contains(&f.sandbox), "{o:?}");
}

#[tokio::test]
async fn cannot_write_outside_home() {
    let f = fixture().await;
    let tag = format!("sw-iso-{}", std::process::id());
    let cmd = format!(
        "touch /usr/{tag} /{tag} /etc/{tag} /bin/{tag}; echo x > /tmp/{tag} && cat /tmp/{tag}; mount -o remount,rw /usr; touch /usr/{tag}; echo done"
    );
    let o = ok(f.run(&cmd).await);
    assert!(o.stdout.contains("x\n"), "private /tmp works: {o:?}");
    assert!(o.stderr.contains("Read-only file system"), "{o:?}");
    for p in [
        format!("/usr/{tag}"),
        format!("/{tag}"),
        format!("/etc/{tag}"),
        format!("/tmp/{tag}"),
    ] {
        assert!(!Path::new(&p).exists(), "{p} was written on the host");
    }
}

#[tokio::test]
async fn network_is_off_by_default() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let f = fixture().await;
    let cmd = format!(
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3); print('CONNECTED')\""
    );
    let o = ok(f.run(&cmd).await);
    assert_ne!(o.exit_code, 0, "{o:?}");
    assert!(!o.stdout.contains("CONNECTED"), "{o:?}");
    assert!(listener.accept().is_err(), "a connection reached the host");
    // Loopback inside the sandbox is its own.
    let o = ok(f.run("python3 -c \"import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); c=socket.create_connection(s.getsockname()); print('LOOP')\"").await);
    assert_eq!(o.stdout, "LOOP\n", "{o:?}");

    // Positive control: with Network::Host the same command connects.
    let g = fixture_with(LocalLimits::default(), Network::Host).await;
    let o = ok(g.run(&cmd).await);
    assert!(o.stdout.contains("CONNECTED"), "{o:?}");
}

#[tokio::test]
async fn nothing_survives_a_timeout() {
    let f = fixture().await;
    // A detached background job, one in a new session (outside the process group) and one
    // that ignores SIGTERM/SIGHUP.
    let cmd = "sleep 1000.101 & setsid sh -c 'sleep 1000.102' & nohup sh -c 'trap \"\" TERM HUP; sleep 1000.103' >/dev/null 2>&1 & sleep 1000.104";
    let start = Instant::now();
    let err = f.run_t(cmd, Duration::from_secs(1)).await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Timeout, "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for t in ["1000.101", "1000.102", "1000.103", "1000.104"] {
        assert!(procs_with(t).is_empty(), "sleep {t} survived the timeout");
    }
    // And when the command finishes normally, its background jobs end with it.
    let o = ok(f.run("setsid sh -c 'sleep 1000.105' & echo started").await);
    assert_eq!(o.stdout, "started\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        procs_with("1000.105").is_empty(),
        "background job survived its step"
    );
}

#[tokio::test]
async fn cancellation_kills_everything() {
    let f = fixture().await;
    let run = f.run_t(
        "setsid sh -c 'sleep 1000.201' & sleep 1000.202",
        Duration::from_secs(60),
    );
    let _ = tokio::time::timeout(Duration::from_millis(700), run).await; // dropped = cancelled
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(procs_with("1000.201").is_empty() && procs_with("1000.202").is_empty());
}

#[tokio::test]
async fn fork_bomb_is_contained() {
    let limits = LocalLimits {
        processes: 128,
        ..LocalLimits::default()
    };
    let f = fixture_with(limits, Network::None).await;
    for bomb in [
        // The classic: its top level returns at once, so the step ends and takes the bomb along.
        "bash -c ':(){ :|:& };: # sw-bomb-1'",
        // One that keeps the step alive until the bomb is done.
        "bash -c ':(){ :|:& };: # sw-bomb-2'; wait; sleep 3; exit 3",
        // Children that never exit: saturates the limit and holds it.
        "bash -c 'while :; do sleep 1000.301 & done # sw-bomb-3'",
    ] {
        let start = Instant::now();
        let r = f.run_t(bomb, Duration::from_secs(8)).await;
        let took = start.elapsed();
        eprintln!(
            "{bomb}: {took:?} -> {:?}",
            r.as_ref()
                .map(|o| (o.exit_code, o.stderr.lines().last().map(str::to_string)))
                .map_err(|e| e.to_string())
        );
        match &r {
            // The classic's top level returns 0 at once: the step ends, and takes the bomb along.
            Ok(o) => assert!(o.exit_code != 0 || bomb.contains("sw-bomb-1"), "{o:?}"),
            Err(e) => assert!(
                matches!(
                    e.category(),
                    ErrorCategory::ResourceLimit | ErrorCategory::Timeout
                ),
                "{e:?}"
            ),
        }
        assert!(took < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The host can still spawn processes, and nothing of the bomb is left.
        assert!(
            std::process::Command::new("true")
                .status()
                .unwrap()
                .success()
        );
        assert!(procs_with("1000.301").is_empty());
        assert!(
            procs_with("sw-bomb-").is_empty(),
            "bomb processes left behind"
        );
    }
    // While a bomb runs, the sandbox's own processes stay under the limit.
    let bomb = tokio::spawn({
        let provider_root = f.root.clone();
        let sandbox = f.sandbox.clone();
        async move {
            let p = LocalProvider::new(
                provider_root,
                LocalLimits {
                    processes: 128,
                    ..LocalLimits::default()
                },
            )
            .unwrap()
            .with_isolation(Isolation::namespaces_unchecked());
            p.run(
                &sandbox,
                &run_spec(
                    "bash -c 'while :; do sleep 1000.302 & done'",
                    Duration::from_secs(3),
                ),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let n = procs_with("1000.302").len();
    eprintln!("sleeps alive under the bomb: {n}");
    assert!(n > 50 && n <= 128, "{n}");
    let _ = bomb.await;
}

#[tokio::test]
async fn memory_limit_holds() {
    let limits = LocalLimits {
        memory_bytes: 512 << 20,
        ..LocalLimits::default()
    };
    let f = fixture_with(limits, Network::None).await;
    let o = ok(f.run("python3 -c 'x=bytearray(2<<30)'").await);
    assert_ne!(o.exit_code, 0, "{o:?}");
    assert!(o.stderr.contains("MemoryError"), "{o:?}");
    let o = ok(f
        .run("python3 -c 'x=bytearray(100<<20); print(len(x))'")
        .await);
    assert_eq!(o.stdout, "104857600\n", "{o:?}");
}

#[tokio::test]
async fn cpu_limit_is_resource_limit() {
    let limits = LocalLimits {
        cpu_time: Duration::from_secs(1),
        ..LocalLimits::default()
    };
    let f = fixture_with(limits, Network::None).await;
    let err = f.run("while :; do :; done").await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::ResourceLimit, "{err:?}");
}

#[tokio::test]
async fn file_size_limit_is_resource_limit() {
    let limits = LocalLimits {
        file_size_bytes: 1 << 20,
        ..LocalLimits::default()
    };
    let f = fixture_with(limits, Network::None).await;
    let err = f.run("head -c 2000000 /dev/zero > big").await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::ResourceLimit, "{err:?}");
}

#[tokio::test]
async fn pid_namespace_hides_host_processes() {
    let f = fixture().await;
    let o = ok(f
        .run("ls /proc | grep -c '^[0-9]'; hostname; cat /proc/self/status | grep CapEff")
        .await);
    let n: u32 = o.stdout.lines().next().unwrap().trim().parse().unwrap();
    assert!(n < 10, "{o:?}");
    assert!(o.stdout.contains("sandbox\n"), "{o:?}");
    assert!(o.stdout.contains("CapEff:\t0000000000000000"), "{o:?}");
}

#[tokio::test]
async fn extra_read_only_binds() {
    let base = tempfile::tempdir().unwrap();
    // Extra sources are bound by the sandbox's unprivileged uid: they must be reachable by it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = base.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("tool.txt"), "SHARED").unwrap();
    let root = base.path().join("sbx");
    let provider = LocalProvider::new(&root, LocalLimits::default())
        .unwrap()
        .with_isolation(Isolation::namespaces_unchecked().with_extra_ro(&shared, "/opt/shared"));
    let id = provider.create(&spec()).await.unwrap();
    let o = ok(provider
        .run(
            &id,
            &run_spec(
                "cat /opt/shared/tool.txt; touch /opt/shared/x",
                Duration::from_secs(10),
            ),
        )
        .await);
    assert_eq!(o.stdout, "SHARED");
    assert!(o.stderr.contains("Read-only"), "{o:?}");
}
