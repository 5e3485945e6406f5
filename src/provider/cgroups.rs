//! Control groups for the `local` provider's commands: every `run` step gets a cgroup of its own
//! with a memory bound, a process bound and (optionally) a CPU share, and the kernel's own
//! counters of limit hits say afterwards whether the step exceeded one. That is exact: no
//! guessing from output text or exit codes.
//!
//! Both hierarchies are handled. On cgroup v2 the files are `memory.max`, `pids.max`,
//! `cpu.max`, and the hits are `oom_kill` in `memory.events` and `max` in `pids.events`. On a
//! v1 (or hybrid) system, where the memory and pids controllers are mounted as their own
//! hierarchies, they are `memory.limit_in_bytes`, `pids.max`, `cpu.cfs_quota_us`, with hits in
//! `memory.oom_control` (`oom_kill`) and `pids.events` (`max`). Which one is usable is decided
//! once, by [`Cgroups::detect`], which creates a cgroup, sets the limits and moves a process
//! into it; any failure is reported with the exact error and the provider falls back to
//! rlimits.
//!
//! Cgroups live under `sandwarden/<service pid>-<n>` below the service's own cgroup in each
//! hierarchy; a step's cgroup is removed when the step ends. This module never kills a
//! process it did not find in one of its own cgroups.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The bounds one step's cgroup gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    pub processes: u64,
    /// CPU share in thousandths of a CPU; 0 = unbounded.
    pub cpu_millis: u64,
}

/// A working cgroup hierarchy to make steps' cgroups in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroups {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// `parent` has the memory and pids controllers enabled for its children.
    V2 { parent: PathBuf },
    /// One parent directory per controller hierarchy.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: Option<PathBuf>,
    },
}

/// A limit the kernel says a step ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Memory,
    Processes,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl Cgroups {
    /// Find a usable hierarchy and prove it works by running a process in a limited cgroup.
    /// The error says what was tried and the exact error each attempt met.
    pub fn detect() -> Result<Cgroups, String> {
        let mounts = fs::read_to_string("/proc/self/mounts")
            .map_err(|e| format!("cannot read /proc/self/mounts: {e}"))?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let mut why = Vec::new();
        match v2(&mounts, &own) {
            Ok(c) => match c.prove() {
                Ok(()) => return Ok(c),
                Err(e) => why.push(format!("cgroup v2: {e}")),
            },
            Err(e) => why.push(format!("cgroup v2: {e}")),
        }
        match v1(&mounts, &own) {
            Ok(c) => match c.prove() {
                Ok(()) => return Ok(c),
                Err(e) => why.push(format!("cgroup v1: {e}")),
            },
            Err(e) => why.push(format!("cgroup v1: {e}")),
        }
        Err(why.join("; "))
    }

    /// `"cgroup v2 (/sys/fs/cgroup/...)"` or `"cgroup v1 (memory: ..., pids: ...)"`.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::V2 { parent } => format!("cgroup v2 ({})", parent.display()),
            Kind::V1 { memory, pids, cpu } => format!(
                "cgroup v1 (memory: {}, pids: {}, cpu: {})",
                memory.display(),
                pids.display(),
                cpu.as_ref()
                    .map_or("not mounted".into(), |c| c.display().to_string())
            ),
        }
    }

    /// Make one step's cgroup with `limits`.
    pub fn create(&self, limits: &CgroupLimits) -> io::Result<StepCgroup> {
        let name = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut made = StepCgroup {
            v2: matches!(self.kind, Kind::V2 { .. }),
            dirs: Vec::new(),
        };
        match &self.kind {
            Kind::V2 { parent } => {
                let dir = made.mkdir(parent, &name)?;
                fs::write(dir.join("memory.max"), limits.memory_bytes.to_string())?;
                // Without swap accounting a bounded step could page out instead of failing.
                let _ = fs::write(dir.join("memory.swap.max"), "0");
                fs::write(dir.join("pids.max"), limits.processes.to_string())?;
                if limits.cpu_millis > 0 {
                    let period = 100_000;
                    let quota = (limits.cpu_millis * period / 1000).max(1000);
                    fs::write(dir.join("cpu.max"), format!("{quota} {period}"))?;
                }
            }
            Kind::V1 { memory, pids, cpu } => {
                let m = made.mkdir(memory, &name)?;
                fs::write(
                    m.join("memory.limit_in_bytes"),
                    limits.memory_bytes.to_string(),
                )?;
                // Only where swap accounting exists; must not be below the limit above.
                let _ = fs::write(
                    m.join("memory.memsw.limit_in_bytes"),
                    limits.memory_bytes.to_string(),
                );
                let p = made.mkdir(pids, &name)?;
                fs::write(p.join("pids.max"), limits.processes.to_string())?;
                if let Some(cpu) = cpu.as_ref().filter(|_| limits.cpu_millis > 0) {
                    let c = made.mkdir(cpu, &name)?;
                    let period: u64 = 100_000;
                    let quota = (limits.cpu_millis * period / 1000).max(1000);
                    fs::write(c.join("cpu.cfs_period_us"), period.to_string())?;
                    fs::write(c.join("cpu.cfs_quota_us"), quota.to_string())?;
                }
            }
        }
        Ok(made)
    }

    /// Run `sh` in a small cgroup, to show that limits can be set and processes moved.
    fn prove(&self) -> Result<(), String> {
        let cg = self
            .create(&CgroupLimits {
                memory_bytes: 64 << 20,
                processes: 16,
                cpu_millis: 0,
            })
            .map_err(|e| format!("cannot create a limited cgroup: {e}"))?;
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("for p; do echo $$ > \"$p\" || exit 1; done")
            .arg("sw-probe");
        cmd.args(cg.procs_files());
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run the probe: {e}"))?;
        let done = cg.remove();
        if !out.status.success() {
            return Err(format!(
                "cannot move a process into a cgroup: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        done.map_err(|e| format!("cannot remove a cgroup: {e}"))
    }
}

/// The parent for steps' cgroups on a pure v2 system: below the service's own cgroup, whose
/// subtree must have (or accept) the memory and pids controllers.
fn v2(mounts: &str, own: &str) -> Result<Cgroups, String> {
    let mount = mount_point(mounts, "cgroup2", None).ok_or("no cgroup2 file system mounted")?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("this process has no cgroup v2 path")?;
    let base = mount.join(rel.trim_start_matches('/'));
    let available = fs::read_to_string(base.join("cgroup.controllers"))
        .map_err(|e| format!("{}: {e}", base.join("cgroup.controllers").display()))?;
    let have: Vec<&str> = available.split_whitespace().collect();
    for c in ["memory", "pids"] {
        if !have.contains(&c) {
            return Err(format!(
                "the {c} controller is not available in {} (controllers: {:?}; on a hybrid \
                 system it is bound to a v1 hierarchy)",
                base.display(),
                available.trim()
            ));
        }
    }
    let parent = base.join("sandwarden");
    if !parent.is_dir() {
        fs::create_dir(&parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    }
    // A cgroup with processes cannot give controllers to its children (the "no internal
    // processes" rule), except the root: the service's own cgroup must be a delegated one.
    let enable = |dir: &Path, what: &str| {
        fs::write(dir.join("cgroup.subtree_control"), what)
            .map_err(|e| format!("enable {what} in {}: {e}", dir.display()))
    };
    let wanted = if have.contains(&"cpu") {
        "+memory +pids +cpu"
    } else {
        "+memory +pids"
    };
    enable(&base, wanted)?;
    enable(&parent, wanted)?;
    Ok(Cgroups {
        kind: Kind::V2 { parent },
    })
}

/// The parents for steps' cgroups on a v1 or hybrid system.
fn v1(mounts: &str, own: &str) -> Result<Cgroups, String> {
    let place = |controller: &str| -> Result<PathBuf, String> {
        let mount = mount_point(mounts, "cgroup", Some(controller))
            .ok_or(format!("no v1 hierarchy with the {controller} controller"))?;
        let rel = own
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                names.split(',').any(|n| n == controller).then_some(path)
            })
            .unwrap_or("/");
        let parent = mount.join(rel.trim_start_matches('/')).join("sandwarden");
        if !parent.is_dir() {
            fs::create_dir(&parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
        }
        Ok(parent)
    };
    let memory = place("memory")?;
    let pids = place("pids")?;
    let cpu = place("cpu").ok();
    Ok(Cgroups {
        kind: Kind::V1 { memory, pids, cpu },
    })
}

/// Where a file system of `fstype` (with `option` among its mount options) is mounted.
fn mount_point(mounts: &str, fstype: &str, option: Option<&str>) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 || f[2] != fstype {
            return None;
        }
        if let Some(o) = option
            && !f[3].split(',').any(|x| x == o)
        {
            return None;
        }
        Some(PathBuf::from(f[1]))
    })
}

/// One step's cgroup (one directory per hierarchy on v1). Removed by [`StepCgroup::remove`];
/// dropping it removes it too, best effort.
#[derive(Debug)]
pub struct StepCgroup {
    v2: bool,
    dirs: Vec<PathBuf>,
}

impl StepCgroup {
    fn mkdir(&mut self, parent: &Path, name: &str) -> io::Result<PathBuf> {
        let dir = parent.join(name);
        fs::create_dir(&dir)?;
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    /// The `cgroup.procs` files a step's first process writes its pid to.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The limit the kernel counted a hit of, if any: an OOM kill (memory) or a refused fork
    /// (processes). Memory first: a step killed for memory may also have been refused forks.
    pub fn exceeded(&self) -> Option<Exceeded> {
        let count = |file: &str, key: &str| -> u64 {
            self.dirs
                .iter()
                .filter_map(|d| fs::read_to_string(d.join(file)).ok())
                .find_map(|text| event_count(&text, key))
                .unwrap_or(0)
        };
        let oom = if self.v2 {
            count("memory.events", "oom_kill")
        } else {
            count("memory.oom_control", "oom_kill")
        };
        if oom > 0 {
            return Some(Exceeded::Memory);
        }
        if count("pids.events", "max") > 0 {
            return Some(Exceeded::Processes);
        }
        None
    }

    /// Kill whatever is left in the cgroups and remove them. The PID namespace has usually
    /// ended everything already; an unisolated step may have left processes.
    pub fn remove(mut self) -> io::Result<()> {
        self.remove_now()
    }

    fn remove_now(&mut self) -> io::Result<()> {
        let mut last = Ok(());
        for dir in std::mem::take(&mut self.dirs).into_iter().rev() {
            last = remove_dir(&dir);
        }
        last
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        let _ = self.remove_now();
    }
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // Busy while the killed processes are still being reaped: a few ms.
            Err(e) if tries < 50 => {
                let _ = e;
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// `key N` in a flat keyed file such as `memory.events`.
fn event_count(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_counts_are_read_by_key() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(event_count(v2, "oom_kill"), Some(1));
        assert_eq!(event_count(v2, "max"), Some(12));
        assert_eq!(event_count("max 0\n", "max"), Some(0));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(event_count(v1, "oom_kill"), Some(3));
        assert_eq!(event_count(v1, "oom"), None);
    }

    #[test]
    fn mount_points_by_type_and_controller() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
                      cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(
            mount_point(mounts, "cgroup", Some("cpu")),
            Some(PathBuf::from("/sys/fs/cgroup/cpu"))
        );
        assert_eq!(
            mount_point(mounts, "cgroup", Some("memory")),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(mount_point(mounts, "cgroup", Some("pids")), None);
        assert_eq!(
            mount_point(mounts, "cgroup2", None),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }
}
