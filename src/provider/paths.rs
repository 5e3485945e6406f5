//! Confinement of job-supplied file paths to a sandbox directory.
//!
//! Jobs name files relative to their sandbox (or under `/home/user`, as on E2B). Anything that
//! could reach outside the sandbox — `..`, other absolute paths, symlinks that lead out — is
//! refused here, before any file is opened. Nothing in this module creates a file; it may create
//! directories, and only ones it has proved lie inside the sandbox.

use std::io;
use std::path::{Component, Path, PathBuf};

use super::ProviderError;

/// The in-sandbox home directory, as E2B names it; absolute paths under it are accepted.
pub const HOME: &str = "/home/user";

/// Check `path` lexically and return it relative to the sandbox root.
pub fn relative(path: &str) -> Result<PathBuf, ProviderError> {
    if path.is_empty() {
        return Err(ProviderError::permanent("path is empty"));
    }
    if path.contains('\0') {
        return Err(ProviderError::permanent(format!(
            "path {path:?} contains a NUL byte"
        )));
    }
    let rel = if let Some(rest) = path.strip_prefix(HOME) {
        if !(rest.is_empty() || rest.starts_with('/')) {
            return Err(ProviderError::permanent(format!(
                "path {path:?} is an absolute path outside the sandbox"
            )));
        }
        rest.trim_start_matches('/')
    } else if path.starts_with('/') {
        return Err(ProviderError::permanent(format!(
            "path {path:?} is an absolute path outside the sandbox"
        )));
    } else {
        path
    };
    let mut out = PathBuf::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ProviderError::permanent(format!(
                    "path {path:?} escapes the sandbox with '..'"
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ProviderError::permanent(format!(
                    "path {path:?} is an absolute path outside the sandbox"
                )));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(ProviderError::permanent(format!(
            "path {path:?} names no file"
        )));
    }
    Ok(out)
}

/// Resolve a path for writing: creates missing parent directories one by one, refusing any
/// existing component that is a symlink leading outside `root`. The final component must not
/// be a symlink (the caller opens it with `O_NOFOLLOW` as well).
pub fn for_write(root: &Path, path: &str) -> Result<PathBuf, ProviderError> {
    let rel = relative(path)?;
    let root = root
        .canonicalize()
        .map_err(|e| io_err("sandbox directory", e))?;
    let mut cur = root.clone();
    let parts: Vec<_> = rel.components().collect();
    for (i, part) in parts.iter().enumerate() {
        cur.push(part);
        let last = i + 1 == parts.len();
        match std::fs::symlink_metadata(&cur) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if last {
                    return Err(ProviderError::permanent(format!(
                        "path {path:?} is a symlink; refusing to write through it"
                    )));
                }
                let target = cur.canonicalize().map_err(|e| io_err(path, e))?;
                if !target.starts_with(&root) {
                    return Err(escape(path));
                }
            }
            Ok(meta) if !last && !meta.is_dir() => {
                return Err(ProviderError::permanent(format!(
                    "path {path:?}: {} is not a directory",
                    part.as_os_str().to_string_lossy()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !last {
                    std::fs::create_dir(&cur).map_err(|e| io_err(path, e))?;
                }
            }
            Err(e) => return Err(io_err(path, e)),
        }
    }
    Ok(cur)
}

/// Resolve a path for reading: the fully resolved file must lie inside `root`.
pub fn for_read(root: &Path, path: &str) -> Result<PathBuf, ProviderError> {
    let rel = relative(path)?;
    let root = root
        .canonicalize()
        .map_err(|e| io_err("sandbox directory", e))?;
    let full = root.join(rel);
    let resolved = full.canonicalize().map_err(|e| io_err(path, e))?;
    if !resolved.starts_with(&root) {
        return Err(escape(path));
    }
    Ok(resolved)
}

fn escape(path: &str) -> ProviderError {
    ProviderError::permanent(format!(
        "path {path:?} leads outside the sandbox through a symlink"
    ))
}

fn io_err(what: &str, e: io::Error) -> ProviderError {
    match e.kind() {
        io::ErrorKind::NotFound => ProviderError::permanent(format!("{what}: no such file")),
        _ => ProviderError::permanent(format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_rules() {
        assert_eq!(relative("a/b.txt").unwrap(), PathBuf::from("a/b.txt"));
        assert_eq!(
            relative("/home/user/a.txt").unwrap(),
            PathBuf::from("a.txt")
        );
        assert_eq!(relative("./a").unwrap(), PathBuf::from("a"));
        for bad in [
            "",
            "../x",
            "a/../../x",
            "/etc/passwd",
            "/home/username/x",
            "a\0b",
            ".",
        ] {
            assert!(relative(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn symlinks_out_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sbx");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("evil")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("host")).unwrap();
        assert!(for_write(&root, "evil/x/y").is_err());
        assert!(!Path::new("/etc/x").exists());
        assert!(for_write(&root, "host").is_err());
        assert!(for_read(&root, "host").is_err());
        assert!(for_read(&root, "evil/hostname").is_err());
        let p = for_write(&root, "ok/nested/file.txt").unwrap();
        assert!(p.starts_with(root.canonicalize().unwrap()));
        assert!(root.join("ok/nested").is_dir());
    }
}
