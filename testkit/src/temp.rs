//! Scratch directories for config files, keys and the logs of the processes a test starts.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory under the system temp dir, removed on drop unless the thread is panicking or
/// [`TempDir::keep`] was called (then it is kept, and its path printed, to be inspected).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Creates a fresh, empty directory named after `label`, the process and a counter.
    ///
    /// # Panics
    ///
    /// When the directory cannot be created; [`TempDir::create`] returns the error instead.
    pub fn new(label: &str) -> Self {
        Self::create(label).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`TempDir::new`], but returns the error.
    pub fn create(label: &str) -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{label}-{}-{n}", std::process::id()));
        // A leftover from an earlier run with the same pid would only confuse us.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create temp dir {}: {e}", path.display()),
            )
        })?;
        Ok(Self { path, keep: false })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory and returns the file's path.
    ///
    /// # Panics
    ///
    /// When the file cannot be written.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let file = self.path.join(name);
        if let Err(e) = fs::write(&file, contents) {
            panic!("cannot write {}: {e}", file.display());
        }
        file
    }

    /// Keeps the directory when it is dropped, e.g. to read a benchmark's logs after the run.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            eprintln!("kept {} for inspection", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}
