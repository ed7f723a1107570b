//! Noticing a file deleted or replaced under the running sidecar.
//!
//! The sidecar writes through a mapping of the inode it created or attached. If someone removes
//! `DIR/web.table` (or renames another file over it), that inode lives on unlinked: writes into it
//! would answer success and be lost with the process, and new readers would open whatever is at
//! the path now. So the sidecar compares the path's identity (device and inode, `stat` without
//! following a symlink) with the one it opened:
//!
//! - before every write over HTTP (put, delete, load, publish), under the file's writer lock;
//! - every second (the expiry sweep's tick), so health and metrics show it without a write.
//!
//! Once a file is lost it stays lost for this process: writes answer `503 file_lost`, `/readyz`
//! and `/healthz` answer 503 naming the file, and `podcache_ready` is 0. The cure is a restart
//! of the sidecar container, which creates the file anew (empty) or refuses to start if a file
//! that is not podcache's is at the path: with the livenessProbe on `/healthz` the kubelet does
//! it by itself. App readers still map the old inode; `TableReader::file_replaced` tells them to
//! reopen.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The identity of the file a writer opened, and whether it is still at its path.
pub(crate) struct FileCheck {
    path: PathBuf,
    dev: u64,
    ino: u64,
    lost: AtomicBool,
    reason: Mutex<String>,
}

impl FileCheck {
    /// Remember the identity of the file now at `path` (just created or attached).
    pub(crate) fn new(path: &Path) -> std::io::Result<FileCheck> {
        let m = std::fs::symlink_metadata(path)?;
        Ok(FileCheck {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            lost: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
        })
    }

    /// `Err(reason)` if the file is no longer the one at its path (now or earlier).
    pub(crate) fn check(&self) -> Result<(), String> {
        // Relaxed: a flag that only ever turns true; the reason is read under its mutex.
        if !self.lost.load(Ordering::Relaxed) {
            let what = match std::fs::symlink_metadata(&self.path) {
                Ok(m) if m.dev() == self.dev && m.ino() == self.ino => return Ok(()),
                Ok(_) => "was replaced by another file",
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "was deleted",
                // Another error (EACCES on the directory, ...) says nothing about the file.
                Err(_) => return Ok(()),
            };
            let mut reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            if !self.lost.swap(true, Ordering::Relaxed) {
                *reason = format!(
                    "{} {what} under the running sidecar; writes to it are refused (they would be lost). \
                     Restart the sidecar container to create it anew (the livenessProbe on /healthz does)",
                    self.path.display()
                );
                tracing::error!(path = %self.path.display(), "file {what}: writes refused until a restart");
            }
        }
        Err(self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_deletion_and_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.table");
        std::fs::write(&p, "x").unwrap();
        let c = FileCheck::new(&p).unwrap();
        assert!(c.check().is_ok());
        std::fs::write(&p, "rewritten in place").unwrap();
        assert!(c.check().is_ok(), "the same inode");
        let other = dir.path().join("b");
        std::fs::write(&other, "y").unwrap();
        std::fs::rename(&other, &p).unwrap();
        assert!(c.check().unwrap_err().contains("replaced"));

        let q = dir.path().join("c.ring");
        std::fs::write(&q, "x").unwrap();
        let c = FileCheck::new(&q).unwrap();
        std::fs::remove_file(&q).unwrap();
        assert!(c.check().unwrap_err().contains("deleted"));
        std::fs::write(&q, "back").unwrap();
        assert!(c.check().is_err(), "lost stays lost");
    }
}
