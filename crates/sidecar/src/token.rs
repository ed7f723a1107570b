//! The API's bearer token (`--token-file`): read at start-up, re-read when the file changes, and
//! compared in constant time.
//!
//! Kubernetes updates a mounted Secret by swapping a symlink, so the file at the path becomes
//! another inode. The sidecar notices a new token two ways:
//!
//! - every second (the tick of the expiry sweep) it compares the file's identity (device,
//!   inode, size, modification time) with the one it read, and re-reads it if any changed: from
//!   then on the old token is refused;
//! - a request with a token that does not match makes it re-read the file at once, at most once
//!   per [`RELOAD_INTERVAL`], so a client that already has the new token is not refused while the
//!   tick has not come yet, and wrong tokens cannot make it read the file more often than that.
//!
//! A file that cannot be read or is empty when re-read leaves the current token in force (and is
//! logged): a Secret being rewritten never opens the API.
//!
//! The scheme `Bearer` is matched without regard to case (RFC 9110 §11.1).

use crate::error::Error;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use subtle::ConstantTimeEq;

/// Least time between two re-reads of the token file caused by wrong tokens.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies the file's content without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileId { dev: m.dev(), ino: m.ino(), len: m.len(), modified: m.modified().ok() })
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let token = text.trim();
    if token.is_empty() {
        return Err("empty".into());
    }
    Ok(token.as_bytes().to_vec())
}

/// The token the API requires.
pub(crate) struct Token {
    path: PathBuf,
    token: RwLock<Vec<u8>>,
    /// When the file was last read and what it was then.
    last: Mutex<(Instant, Option<FileId>)>,
}

impl Token {
    /// Read the token file (start-up: a missing or empty file is an error).
    pub(crate) fn load(path: &Path) -> Result<Token, Error> {
        let id = file_id(path);
        let token = read(path).map_err(|reason| Error::Token { path: path.to_path_buf(), reason })?;
        Ok(Token { path: path.to_path_buf(), token: RwLock::new(token), last: Mutex::new((Instant::now(), id)) })
    }

    fn matches(&self, given: &[u8]) -> bool {
        let token = self.token.read().unwrap_or_else(|p| p.into_inner());
        bool::from(given.ct_eq(&token[..]))
    }

    /// Whether the `Authorization` header value carries the token (`Bearer <token>`, the scheme
    /// in any case).
    pub(crate) fn check(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization.and_then(bearer) else {
            return false;
        };
        if self.matches(given) {
            return true;
        }
        // Perhaps a new token the file already holds: re-read it, at most once per interval.
        {
            let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.0.elapsed() < RELOAD_INTERVAL {
                return false;
            }
        }
        self.reload(true);
        self.matches(given)
    }

    /// Re-read the file if it changed since it was read (see the module docs).
    pub(crate) fn refresh(&self) {
        let changed = {
            let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            file_id(&self.path) != last.1
        };
        if changed {
            self.reload(false);
        }
    }

    /// Read the file again. `always`: even if its identity did not change.
    fn reload(&self, always: bool) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let id = file_id(&self.path);
        if !always && id == last.1 {
            return;
        }
        *last = (Instant::now(), id);
        match read(&self.path) {
            Ok(new) => {
                let mut token = self.token.write().unwrap_or_else(|p| p.into_inner());
                if *token != new {
                    *token = new;
                    tracing::info!(path = %self.path.display(), "token file changed: the new token is in force");
                }
            }
            Err(reason) => tracing::warn!(
                path = %self.path.display(),
                "token file cannot be re-read ({reason}); the previous token stays in force"
            ),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let t = rest.trim_ascii();
    (!t.is_empty()).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_in_any_case() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"BEARER   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearerabc"), None);
    }

    #[test]
    fn compares_whole_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "secret\n").unwrap();
        let t = Token::load(&p).unwrap();
        assert!(t.check(Some(b"Bearer secret")));
        assert!(!t.check(Some(b"Bearer secreT")));
        assert!(!t.check(Some(b"Bearer secret2")));
        assert!(!t.check(Some(b"Bearer secre")));
        assert!(!t.check(None));
    }

    #[test]
    fn refresh_follows_a_replaced_file_and_keeps_the_token_if_it_vanishes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "one").unwrap();
        let t = Token::load(&p).unwrap();
        // Replaced by rename, as a Secret update swaps its files: another inode.
        let tmp = dir.path().join("t.new");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        t.refresh();
        assert!(t.check(Some(b"Bearer two")));
        assert!(!t.matches(b"one"));
        std::fs::remove_file(&p).unwrap();
        t.refresh();
        assert!(t.matches(b"two"), "a vanished file leaves the token in force");
    }
}
