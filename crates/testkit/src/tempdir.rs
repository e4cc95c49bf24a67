//! Scratch directories for tests.

use std::path::{Path, PathBuf};

/// A scratch directory (from `tempfile`, named `kproxy-<tag>-...`),
/// removed on drop.
#[derive(Debug)]
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// A new, empty directory under the system's temporary directory.
    pub fn new(tag: &str) -> TempDir {
        TempDir(
            tempfile::Builder::new()
                .prefix(&format!("kproxy-{tag}-"))
                .tempdir()
                .expect("temporary directory"),
        )
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// Write `name` (write then rename, as editors and ConfigMap updates
    /// do, so a reader never sees half a file); its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.join(name);
        let tmp = self.join(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write temporary file");
        std::fs::rename(&tmp, &p).expect("rename temporary file");
        p
    }

    /// Write the executable program `name` (a script); its path.
    pub fn write_program(&self, name: &str, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let p = self.write(name, script);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
            .expect("make the program executable");
        p
    }

    /// A `PATH` that finds the programs in this directory before those of
    /// the test's own `PATH`.
    pub fn path_first(&self) -> String {
        format!(
            "{}:{}",
            self.path().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_removes() {
        let d = TempDir::new("t");
        let p = d.write("a.yaml", "x: 1\n");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "x: 1\n");
        assert!(!d.join(".a.yaml.tmp").exists());
        let dir = d.path().to_path_buf();
        assert!(
            dir.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kproxy-t-"))
        );
        drop(d);
        assert!(!dir.exists());
    }
}
