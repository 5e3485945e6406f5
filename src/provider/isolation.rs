//! Isolation of the `local` provider's commands with Linux namespaces, using only tools every
//! Debian system has: util-linux `unshare`, `setpriv`, `prlimit`, `mount`, `umount`,
//! `pivot_root`, and `/bin/sh`. No bubblewrap, no helper binary, no `unsafe`.
//!
//! Every command runs as
//!
//! ```text
//! [setpriv --reuid=U --regid=U --clear-groups --]        (only when the service runs as root)
//!   unshare --user --map-root-user --mount --pid --fork --kill-child --ipc --uts [--net]
//!     /bin/sh -c INIT sw-init CMD NETWORK PRLIMIT-ARGS N [HOST INNER]*N [K=V]*
//! ```
//!
//! `INIT` (below) is pid 1 of the new PID namespace and root of the new user namespace (mapped to
//! one unprivileged host uid: `U` = [`SANDBOX_HOST_UID`] when the service is root, else the
//! service's own uid). It builds a new root on a tmpfs: read-only binds of `/usr` (and `/bin`,
//! `/lib`... as symlinks or binds), a minimal `/etc` (generated `passwd`, `group`, `hosts`,
//! `hostname`; read-only binds of what programs need to run: `alternatives`, `ld.so.*`, `ssl`,
//! `ca-certificates`, ...), `/dev` with only `null zero full random urandom tty`, a private
//! `devpts`, `/dev/shm`, `/tmp` and `/proc`, and the sandbox directory bound read-write at
//! `/home/user`. It then `pivot_root`s into it, detaches the old root, and runs the command as
//! its child with the rlimits applied (`prlimit`), every capability dropped (`setpriv
//! --bounding-set=-all --no-new-privs`) and only the job's environment (`env -i`). When the
//! command's top process exits, pid 1 exits (after a 200 ms grace when the command left
//! processes behind), and the kernel kills everything left in the namespace. Killing pid 1 (or the `unshare` parent, through `--kill-child`) kills everything.
//!
//! Because the namespace's root is an unprivileged host uid, `RLIMIT_NPROC` is enforced (it is
//! not for host root), counted per user namespace, so it bounds each command's process tree
//! separately: a fork bomb stops at the limit.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::local::LocalLimits;

/// The host uid (and gid) sandboxed processes run as when the service runs as root. Chosen
/// outside the ranges of ordinary accounts and of the usual `/etc/subuid` allocations.
pub const SANDBOX_HOST_UID: u32 = 1_879_048_192; // 0x7000_0000

/// Exit status the init script uses when building the sandbox failed (with [`SETUP_FAILED`]
/// on stderr).
pub const SETUP_FAILED_CODE: i32 = 125;
pub const SETUP_FAILED: &str = "sandwarden-init: sandbox setup failed";

pub use super::Network;

/// Which isolation a local provider applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    mode: Mode,
    /// Extra read-only binds for every sandbox: (host path, path inside the sandbox).
    pub extra_ro: Vec<(PathBuf, PathBuf)>,
}

/// What one sandbox's commands get beyond the provider-wide isolation: chosen when the sandbox
/// is created (job, template, configuration) and kept with it, so every step sees the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confinement {
    /// A fresh network namespace (loopback only) or the host's.
    pub network: Network,
    /// Host directories bound read-only at the same path inside the sandbox (a template's tools).
    pub tools: Vec<PathBuf>,
    /// `cgroup.procs` files the command joins before anything else runs (see `cgroups`).
    pub cgroup_procs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Namespaces,
}

impl Isolation {
    /// No isolation: the pre-existing behaviour (`prlimit` + `/bin/sh` in the sandbox directory).
    /// Only for `isolation = "none"` in the configuration.
    pub fn none() -> Self {
        Isolation {
            mode: Mode::None,
            extra_ro: Vec::new(),
        }
    }

    /// Namespace isolation, after checking with [`probe`] that it works here. The error lists the
    /// problems, for the service to refuse to start with.
    pub fn namespaces() -> Result<Self, Probe> {
        let p = probe();
        if !p.ok() {
            return Err(p);
        }
        Ok(Self::namespaces_unchecked())
    }

    /// Namespace isolation without probing (tests, or when the caller probed already).
    pub fn namespaces_unchecked() -> Self {
        Isolation {
            mode: Mode::Namespaces,
            extra_ro: Vec::new(),
        }
    }

    pub fn with_extra_ro(mut self, host: impl Into<PathBuf>, inner: impl Into<PathBuf>) -> Self {
        self.extra_ro.push((host.into(), inner.into()));
        self
    }

    pub fn is_isolated(&self) -> bool {
        self.mode == Mode::Namespaces
    }

    /// The command that runs `cmd` for a sandbox under this isolation (see [`command`]); without
    /// isolation, the old `prlimit ... /bin/sh -c` in `sandbox_dir` (where the network choice
    /// and the tools cannot be applied: the host is all there is). Either way the command first
    /// joins `confine.cgroup_procs`.
    pub fn command(
        &self,
        sandbox_dir: &Path,
        cmd: &str,
        env: &BTreeMap<String, String>,
        limits: &LocalLimits,
        confine: &Confinement,
    ) -> tokio::process::Command {
        let mut a = join_cgroups(&confine.cgroup_procs);
        match self.mode {
            Mode::Namespaces => {
                let mut ro = self.extra_ro.clone();
                ro.extend(confine.tools.iter().map(|t| (t.clone(), t.clone())));
                a.extend(argv(cmd, env, limits, confine.network, &ro, FULL));
                let mut c = tokio::process::Command::new(&a[0]);
                c.args(&a[1..])
                    .current_dir(sandbox_dir)
                    .env_clear()
                    .envs(init_env());
                c
            }
            Mode::None => {
                a.push("prlimit".into());
                a.extend(prlimit_args(limits).into_iter().map(OsString::from));
                a.extend(["--", "/bin/sh", "-c", cmd].map(OsString::from));
                let mut c = tokio::process::Command::new(&a[0]);
                c.args(&a[1..])
                    .current_dir(sandbox_dir)
                    .env_clear()
                    .envs(env);
                c
            }
        }
    }

    /// Make `path` (and its ancestors up to and including `root`) writable from inside the
    /// sandbox: when the service runs as root, sandboxed processes run as host uid
    /// [`SANDBOX_HOST_UID`] and the sandbox's files must belong to it. A no-op otherwise.
    pub fn adopt(&self, root: &Path, path: &Path) -> io::Result<()> {
        if self.mode == Mode::None || !nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        adopt(root, path)
    }
}

impl Isolation {
    /// Give the sandbox's uid one of the command's stdout/stderr pipes (created by the service, so
    /// owned by root, mode 0600), so that `> /dev/stdout` works inside. Call right after spawning:
    /// the command itself starts only after the sandbox is built, tens of milliseconds later.
    pub fn adopt_fd(&self, fd: impl std::os::fd::AsFd) -> io::Result<()> {
        if self.mode == Mode::None || !nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        nix::unistd::fchown(
            fd,
            Some(nix::unistd::Uid::from_raw(SANDBOX_HOST_UID)),
            Some(nix::unistd::Gid::from_raw(SANDBOX_HOST_UID)),
        )
        .map_err(io::Error::from)
    }
}

fn adopt(root: &Path, path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let uid = nix::unistd::Uid::from_raw(SANDBOX_HOST_UID);
    let gid = nix::unistd::Gid::from_raw(SANDBOX_HOST_UID);
    let mut cur = Some(path);
    while let Some(p) = cur {
        if !p.starts_with(root) {
            break;
        }
        let meta = std::fs::symlink_metadata(p)?;
        if meta.uid() != SANDBOX_HOST_UID || meta.gid() != SANDBOX_HOST_UID {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                p,
                Some(uid),
                Some(gid),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(io::Error::from)?;
        }
        if p == root {
            break;
        }
        cur = p.parent();
    }
    Ok(())
}

fn prlimit_args(limits: &LocalLimits) -> Vec<String> {
    let cpu = limits.cpu_time.as_secs().max(1);
    let n = |v: u64| {
        if v == u64::MAX {
            "unlimited".to_string()
        } else {
            v.to_string()
        }
    };
    vec![
        format!("--cpu={cpu}"),
        format!("--as={}", n(limits.memory_bytes)),
        format!("--nofile={}", n(limits.open_files)),
        format!("--nproc={}", n(limits.processes)),
        format!("--fsize={}", n(limits.file_size_bytes)),
    ]
}

/// Moves itself into each cgroup named before `--`, then becomes the rest of its arguments: the
/// command joins its cgroups before it can fork, with no code between fork and exec in this
/// process (which `#![forbid(unsafe_code)]` rules out).
const JOIN: &str = r#"
for p; do
  shift
  [ "$p" = -- ] && break
  echo $$ > "$p" || { echo "sandwarden-init: sandbox setup failed: cannot join cgroup $p" >&2; exit 125; }
done
exec "$@"
"#;

fn join_cgroups(procs: &[PathBuf]) -> Vec<OsString> {
    if procs.is_empty() {
        return Vec::new();
    }
    let mut a: Vec<OsString> = ["/bin/sh", "-c", JOIN, "sw-join"]
        .map(OsString::from)
        .to_vec();
    a.extend(procs.iter().map(|p| p.clone().into_os_string()));
    a.push("--".into());
    a
}

/// Runs as pid 1 of the new PID namespace, as root of the new user namespace, with the sandbox
/// directory as working directory. Arguments: CMD NETWORK PRLIMIT-ARGS N [HOST INNER]*N [K=V]*.
/// The setup runs in a subshell under `set -e`; mounts are per namespace, so they persist.
const INIT: &str = r#"
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 022
cmd=$1; net=$2; lim=$3; n=$4; shift 4
# The new root is staged on a tmpfs mounted over /dev/shm, which hides only that directory from
# the later bind sources in this namespace; over /tmp where there is no /dev/shm.
R=/dev/shm
[ -d $R ] || R=/tmp
# Not `( ... ) || fail`: `set -e` is ignored inside a subshell whose status is tested.
# Processes are the cost here (a few ms each): mount points are made by one `mkdir`, the mounts
# by one `mount -a` from a generated fstab (read before the tmpfs it sits on is covered).
(
set -e
mount -t tmpfs -o mode=0755,nosuid,nodev,size=1m sw-root $R
: > $R/.sandwarden-root
F=$R/tmp/.fstab
dirs="$R/home $R/home/user $R/tmp $R/dev $R/proc $R/etc $R/dev/shm $R/dev/pts"
fstab="/proc/self/cwd $R/home/user none bind 0 0"
add() { fstab="$fstab
$1 $2 none $3 0 0"; }
for d in /usr /bin /sbin /lib /lib32 /lib64 /libx32 /etc/alternatives /etc/ld.so.conf.d /etc/ssl /etc/ca-certificates; do
  if [ -d $d ]; then dirs="$dirs $R$d"; add $d $R$d rbind,ro; fi
done
for f in /etc/ld.so.cache /etc/ld.so.conf /etc/localtime /etc/nsswitch.conf /etc/protocols /etc/services /etc/mime.types; do
  if [ -f $f ]; then add $f $R$f bind,ro; fi
done
for d in null zero full random urandom tty; do add /dev/$d $R/dev/$d bind; done
fstab="$fstab
sw-shm $R/dev/shm tmpfs mode=1777,nosuid,nodev 0 0
devpts $R/dev/pts devpts newinstance,ptmxmode=0666,mode=620 0 0
$R/dev/pts/ptmx $R/dev/ptmx none bind 0 0
sw-tmp $R/tmp tmpfs mode=1777,nosuid,nodev 0 0
proc $R/proc proc nosuid,nodev,noexec 0 0"
# Extra binds are mounted in a second pass: their mount points may lie under /tmp or /dev/shm,
# which the first pass covers with fresh tmpfs.
xdirs=; xfstab=
while [ "$n" -gt 0 ]; do xdirs="$xdirs $R$2"; xfstab="$xfstab
$1 $R$2 none rbind,ro 0 0"; shift 2; n=$((n-1)); done
mkdir -p $dirs
for f in /etc/ld.so.cache /etc/ld.so.conf /etc/localtime /etc/nsswitch.conf /etc/protocols /etc/services /etc/mime.types; do
  if [ -f $f ]; then : > $R$f; fi
done
for d in null zero full random urandom tty ptmx; do : > $R/dev/$d; done
printf '%s\n' "$fstab" > $F
mount -c -a -T $F
if [ -n "$xfstab" ]; then
  mkdir -p $xdirs
  printf '%s\n' "$xfstab" > $R/.sw-fstab2
  mount -c -a -T $R/.sw-fstab2
  rm $R/.sw-fstab2
fi
if [ -L /dev/fd ] && [ -L /dev/stdin ] && [ -L /dev/stdout ] && [ -L /dev/stderr ]; then
  cp -P /dev/fd /dev/stdin /dev/stdout /dev/stderr $R/dev/
else
  ln -s /proc/self/fd $R/dev/fd; ln -s fd/0 $R/dev/stdin; ln -s fd/1 $R/dev/stdout; ln -s fd/2 $R/dev/stderr
fi
hostname sandbox 2>/dev/null || true
printf 'root:x:0:0:root:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' > $R/etc/passwd
printf 'root:x:0:\nnogroup:x:65534:\n' > $R/etc/group
printf 'sandbox\n' > $R/etc/hostname
printf '127.0.0.1 localhost sandbox\n::1 localhost\n' > $R/etc/hosts
if [ "$net" = host ] && [ -e /etc/resolv.conf ]; then cat /etc/resolv.conf > $R/etc/resolv.conf; fi
if [ "$net" != host ] && [ -x /usr/sbin/ip ]; then /usr/sbin/ip link set lo up 2>/dev/null || true; fi
mount -o remount,bind,ro $R
cd $R
# Stack the new root over the old one, then detach the old one: no trace of it is left.
pivot_root . .
umount -l .
)
if [ $? -ne 0 ] || [ ! -e /.sandwarden-root ] || ! cd /home/user; then
  echo "sandwarden-init: sandbox setup failed" >&2; exit 125
fi
while [ "$n" -gt 0 ]; do shift 2; n=$((n-1)); done
prlimit $lim -- setpriv --bounding-set=-all --inh-caps=-all --no-new-privs -- env -i -- "$@" /bin/sh -c "$cmd" </dev/null &
wait $!
rc=$?
# Processes the command left behind get a short grace before they die with this one: enough to
# finish a write, and for a runaway (a fork bomb whose top level returns at once) to meet the
# step's limits and be reported as such. The glob costs no process when nothing is left.
set -- /proc/[0-9]*
if [ $# -gt 1 ]; then sleep 0.2; fi
exit $rc
"#;

fn init_env() -> [(&'static str, &'static str); 2] {
    [
        ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        ("LANG", "C.UTF-8"),
    ]
}

/// The program and arguments that run `cmd` isolated (shared by [`command`] and [`probe`]).
fn argv(
    cmd: &str,
    env: &BTreeMap<String, String>,
    limits: &LocalLimits,
    network: Network,
    extra_ro: &[(PathBuf, PathBuf)],
    namespaces: &[&str],
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    if nix::unistd::geteuid().is_root() {
        a.extend(
            [
                "setpriv".to_string(),
                format!("--reuid={SANDBOX_HOST_UID}"),
                format!("--regid={SANDBOX_HOST_UID}"),
                "--clear-groups".to_string(),
                "--".to_string(),
            ]
            .map(OsString::from),
        );
    }
    a.push("unshare".into());
    for ns in namespaces {
        a.push((*ns).into());
    }
    if network == Network::None {
        a.push("--net".into());
    }
    a.extend(["/bin/sh", "-c", INIT, "sw-init", cmd].map(OsString::from));
    a.push(
        match network {
            Network::None => "none",
            Network::Host => "host",
        }
        .into(),
    );
    let mut lim = prlimit_args(limits);
    // Soft limit N sends SIGXCPU; with hard == soft the kernel sends SIGKILL instead.
    let cpu = limits.cpu_time.as_secs().max(1);
    lim[0] = format!("--cpu={cpu}:{}", cpu + 1);
    a.push(lim.join(" ").into());
    let extra: Vec<_> = extra_ro
        .iter()
        .filter(|(h, i)| {
            i.is_absolute()
                && i.components().count() > 1
                && !i
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
                && h.is_absolute()
                && [h, i].iter().all(|p| {
                    p.to_str().is_some_and(|s| {
                        !s.bytes()
                            .any(|b| b.is_ascii_whitespace() || b == b'\\' || b == b'#')
                    })
                })
        })
        .collect();
    a.push(extra.len().to_string().into());
    for (h, i) in extra {
        a.push(h.into());
        a.push(i.into());
    }
    for (k, v) in env {
        // A key that `env` would not take as an assignment is dropped.
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            continue;
        }
        a.push(format!("{k}={v}").into());
    }
    a
}

const FULL: &[&str] = &[
    "--user",
    "--map-root-user",
    "--mount",
    "--pid",
    "--fork",
    "--kill-child",
    "--ipc",
    "--uts",
];

/// Which isolation mechanisms work on this machine, for this user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub user_ns: bool,
    pub mount_ns: bool,
    pub pid_ns: bool,
    pub net_ns: bool,
    /// `RLIMIT_NPROC` bounds a sandbox's processes (a fork bomb is contained).
    pub nproc_limit: bool,
    /// The whole sandbox (new root, pivot_root, dropped capabilities) was built and ran.
    pub full: bool,
    /// `"unshare"` when everything works, else `"none"`.
    pub mechanism: &'static str,
    pub problems: Vec<String>,
}

impl Probe {
    pub fn ok(&self) -> bool {
        self.mechanism != "none"
    }
}

/// Check, by running them, which isolation mechanisms work here. Takes a few tens of
/// milliseconds; meant for service start-up.
pub fn probe() -> Probe {
    let mut problems = Vec::new();
    for tool in [
        "unshare",
        "setpriv",
        "prlimit",
        "mount",
        "umount",
        "pivot_root",
        "env",
    ] {
        let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists());
        if !found {
            problems.push(format!("{tool} is not installed"));
        }
    }
    let dir = match ProbeDir::new() {
        Ok(d) => d,
        Err(e) => {
            problems.push(format!("cannot create a probe directory: {e}"));
            return Probe {
                user_ns: false,
                mount_ns: false,
                pid_ns: false,
                net_ns: false,
                nproc_limit: false,
                full: false,
                mechanism: "none",
                problems,
            };
        }
    };
    let limits = LocalLimits::default();
    let env = BTreeMap::new();
    let mut single = |what: &str, ns: &[&str]| -> bool {
        let mut a = argv("true", &env, &limits, Network::Host, &[], ns);
        // Replace INIT and its arguments by a plain `true`.
        let at = a.iter().position(|x| x == "/bin/sh").unwrap_or(a.len());
        a.truncate(at);
        a.push("true".into());
        match run_sync(&dir.0, &a, Duration::from_secs(10)) {
            Ok((0, _, _)) => true,
            Ok((code, _, err)) => {
                problems.push(format!("{what} namespace: exit {code}: {}", err.trim()));
                false
            }
            Err(e) => {
                problems.push(format!("{what} namespace: {e}"));
                false
            }
        }
    };
    let user_ns = single("user", &["--user", "--map-root-user"]);
    let mount_ns = user_ns && single("mount", &["--user", "--map-root-user", "--mount"]);
    let pid_ns = user_ns && single("pid", &["--user", "--map-root-user", "--pid", "--fork"]);
    let net_ns = user_ns && single("network", &["--user", "--map-root-user", "--net"]);
    let mut full = false;
    let mut nproc_limit = false;
    if user_ns && mount_ns && pid_ns {
        let check = "[ -e /.sandwarden-root ] && [ \"$(cat /etc/hostname)\" = sandbox ] && \
                     [ -w /home/user ] && ! [ -w /usr ] && echo sandwarden-probe-ok";
        let a = argv(check, &env, &limits, Network::None, &[], FULL);
        match run_sync(&dir.0, &a, Duration::from_secs(10)) {
            Ok((0, out, _)) if out.contains("sandwarden-probe-ok") => full = true,
            Ok((code, out, err)) => problems.push(format!(
                "isolated sandbox does not work: exit {code}: {} {}",
                out.trim(),
                err.trim()
            )),
            Err(e) => problems.push(format!("isolated sandbox does not work: {e}")),
        }
        // Four processes allowed (init, the shell, and two sleeps): the tenth fork must fail.
        let small = LocalLimits {
            processes: 4,
            ..LocalLimits::default()
        };
        let bomb = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1 & done; echo forked-all";
        let a = argv(bomb, &env, &small, Network::None, &[], FULL);
        match run_sync(&dir.0, &a, Duration::from_secs(10)) {
            Ok((_, out, _)) if !out.contains("forked-all") => nproc_limit = true,
            Ok(_) => problems.push("RLIMIT_NPROC is not enforced in the sandbox".into()),
            Err(e) => problems.push(format!("process limit check failed: {e}")),
        }
    }
    let mechanism = if full && nproc_limit && net_ns {
        "unshare"
    } else {
        "none"
    };
    Probe {
        user_ns,
        mount_ns,
        pid_ns,
        net_ns,
        nproc_limit,
        full,
        mechanism,
        problems,
    }
}

struct ProbeDir(PathBuf);

impl ProbeDir {
    fn new() -> io::Result<Self> {
        let bytes: [u8; 8] = rand::random();
        let p = std::env::temp_dir().join(format!("sandwarden-probe-{}", hex::encode(bytes)));
        std::fs::create_dir(&p)?;
        if nix::unistd::geteuid().is_root() {
            adopt(&p, &p)?;
        }
        Ok(ProbeDir(p))
    }
}

impl Drop for ProbeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_sync(dir: &Path, a: &[OsString], limit: Duration) -> io::Result<(i32, String, String)> {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(&a[0])
        .args(&a[1..])
        .current_dir(dir)
        .env_clear()
        .envs(init_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let mut out = String::new();
            let mut err = String::new();
            if let Some(mut o) = child.stdout.take() {
                let _ = o.read_to_string(&mut out);
            }
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            use std::os::unix::process::ExitStatusExt;
            let code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            return Ok((code, out, err));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
