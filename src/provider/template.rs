//! Templates of the `local` provider: what a new sandbox starts with.
//!
//! A template `NAME` is the directory `<templates dir>/NAME`, whose contents are copied into a
//! new sandbox's home, and/or a `[local.templates.NAME]` table in the configuration naming host
//! directories (a Node.js or Python install, say) bound read-only into its sandboxes and a
//! network choice. `base` always exists: an empty home unless a `base` directory seeds it. Any
//! other name that is neither a directory nor configured is refused, naming it.
//!
//! Copying never follows a symbolic link (links are copied as links, which inside the sandbox's
//! own root can only point at what the sandbox can see anyway), and keeps only permission bits.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::{Network, ProviderError};

/// The name every service knows.
pub const BASE: &str = "base";

/// One configured template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Template {
    /// Host directories bound read-only at the same path in its sandboxes.
    pub tools: Vec<PathBuf>,
    /// The network its sandboxes get unless the job says otherwise.
    pub network: Option<Network>,
}

/// Where templates come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Templates {
    /// Directories named after templates; `None` when there is none (then only configured
    /// templates and `base` exist).
    pub dir: Option<PathBuf>,
    pub configured: BTreeMap<String, Template>,
}

/// What a sandbox made from a template gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// A directory whose contents seed the sandbox.
    pub seed: Option<PathBuf>,
    pub tools: Vec<PathBuf>,
}

/// A template name that can be a directory name: letters, digits, `-`, `_` and `.`, not
/// starting with a dot.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Templates {
    /// Look `name` up; an unknown template is a permanent error that names it.
    pub fn resolve(&self, name: &str) -> Result<Resolved, ProviderError> {
        if !valid_name(name) {
            return Err(ProviderError::permanent(format!(
                "template {name:?} is not a valid template name"
            )));
        }
        let seed = self
            .dir
            .as_ref()
            .map(|d| d.join(name))
            .filter(|d| d.is_dir());
        let configured = self.configured.get(name);
        if seed.is_none() && configured.is_none() && name != BASE {
            let where_ = match &self.dir {
                Some(d) => format!("no directory {}", d.join(name).display()),
                None => "no templates directory".to_string(),
            };
            return Err(ProviderError::permanent(format!(
                "template {name:?} does not exist ({where_} and no [local.templates.{name}])"
            )));
        }
        Ok(Resolved {
            seed,
            tools: configured.map(|t| t.tools.clone()).unwrap_or_default(),
        })
    }
}

/// Copy the contents of `from` into the existing directory `to`, calling `adopt` on every
/// entry made (to hand it to the sandbox's user).
pub fn seed(
    from: &Path,
    to: &Path,
    adopt: &mut dyn FnMut(&Path) -> io::Result<()>,
) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if kind.is_dir() {
            std::fs::create_dir(&dst)?;
            adopt(&dst)?;
            seed(&src, &dst, adopt)?;
            continue;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst)?;
            let mode = entry.metadata()?.permissions().mode() & 0o777;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))?;
        } else {
            // Devices, sockets and fifos are not seeded.
            continue;
        }
        adopt(&dst)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_templates_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("py")).unwrap();
        let t = Templates {
            dir: Some(dir.path().to_path_buf()),
            configured: BTreeMap::from([("node".to_string(), Template::default())]),
        };
        assert!(t.resolve("base").unwrap().seed.is_none());
        assert_eq!(t.resolve("py").unwrap().seed, Some(dir.path().join("py")));
        assert!(t.resolve("node").is_ok());
        let e = t.resolve("rust").unwrap_err();
        assert_eq!(e.category(), super::super::ErrorCategory::Permanent);
        assert!(e.message().contains("\"rust\""), "{e}");
        for bad in ["../x", "a/b", ".hidden", ""] {
            assert!(t.resolve(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seeding_copies_files_dirs_and_links() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(from.path().join("src/lib")).unwrap();
        std::fs::write(from.path().join("src/lib/a.txt"), "A").unwrap();
        std::fs::write(from.path().join("run.sh"), "echo hi").unwrap();
        std::os::unix::fs::symlink("src/lib/a.txt", from.path().join("link")).unwrap();
        let mut n = 0;
        seed(from.path(), to.path(), &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 5);
        assert_eq!(
            std::fs::read_to_string(to.path().join("src/lib/a.txt")).unwrap(),
            "A"
        );
        assert_eq!(
            std::fs::read_link(to.path().join("link")).unwrap(),
            PathBuf::from("src/lib/a.txt")
        );
    }
}
