//! Errors of opening (reader) and creating or attaching (writer) a file.

use crate::header::{HeaderError, Kind};
use std::path::PathBuf;

/// A reader could not open a podcache file.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// No file at the path (the writer has not created it yet?).
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// The file exists but its creator has not finished initialising it.
    NotReady {
        /// The path.
        path: PathBuf,
    },
    /// The file was made by a build with another layout version.
    VersionMismatch {
        /// The path.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// The file holds another kind of structure (a table where a ring was expected, …).
    WrongKind {
        /// The path.
        path: PathBuf,
        /// Kind number found.
        found: u32,
        /// Kind expected.
        expected: Kind,
    },
    /// The file is shorter than its header says.
    Truncated {
        /// The path.
        path: PathBuf,
        /// Bytes required.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// Not a podcache file at all: no podcache magic in its first word (another program's
    /// file, or one whose first word was overwritten), or not a regular file (a directory, a
    /// FIFO, a device). Nothing of it was trusted.
    Foreign {
        /// The path.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
    /// A podcache file whose header or layout is inconsistent (damaged, or written by no
    /// podcache writer).
    Corrupt {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another I/O error (permissions, …).
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

#[cfg_attr(loom, allow(dead_code))]
impl OpenError {
    pub(crate) fn from_header(path: PathBuf, e: HeaderError) -> OpenError {
        match e {
            HeaderError::NotReady => OpenError::NotReady { path },
            HeaderError::VersionMismatch { found, expected } => OpenError::VersionMismatch { path, found, expected },
            HeaderError::WrongKind { found, expected } => OpenError::WrongKind { path, found, expected },
            HeaderError::Truncated { expected, actual } => OpenError::Truncated { path, expected, actual },
            HeaderError::BadMagic => OpenError::Foreign { path, reason: e.to_string() },
            HeaderError::ReadyLost | HeaderError::Corrupt(_) => OpenError::Corrupt { path, reason: e.to_string() },
        }
    }

    pub(crate) fn io(path: PathBuf, source: std::io::Error) -> OpenError {
        if source.kind() == std::io::ErrorKind::NotFound {
            OpenError::NotFound { path }
        } else {
            OpenError::Io { path, source }
        }
    }

    /// Whether waiting could make this error go away (`NotFound`, `NotReady`).
    pub fn is_transient(&self) -> bool {
        matches!(self, OpenError::NotFound { .. } | OpenError::NotReady { .. })
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::NotFound { path } => write!(f, "{}: no such file (has the writer created it?)", path.display()),
            OpenError::NotReady { path } => {
                write!(f, "{}: not ready (the writer is still creating it)", path.display())
            }
            OpenError::VersionMismatch { path, found, expected } => {
                write!(f, "{}: {}", path.display(), crate::header::version_advice(*found, *expected))
            }
            OpenError::WrongKind { path, found, expected } => {
                write!(f, "{}: ", path.display())?;
                std::fmt::Display::fmt(&HeaderError::WrongKind { found: *found, expected: *expected }, f)
            }
            OpenError::Truncated { path, expected, actual } => {
                write!(f, "{}: truncated: {actual} bytes, header requires {expected}", path.display())
            }
            OpenError::Foreign { path, reason } | OpenError::Corrupt { path, reason } => {
                write!(f, "{}: {reason}", path.display())
            }
            OpenError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A writer could not create or attach to a file.
#[cfg(feature = "write")]
#[derive(Debug)]
#[non_exhaustive]
pub enum CreateError {
    /// Another process holds the writer lock on this file.
    Locked {
        /// The path.
        path: PathBuf,
    },
    /// The volume has no room for the file.
    NoSpace {
        /// The path.
        path: PathBuf,
        /// Bytes the file needs.
        needed: u64,
        /// Bytes free on the volume (as `statvfs` reports them), if known.
        available: Option<u64>,
    },
    /// Something that is not podcache's own file is at the path (a symbolic link, a directory or
    /// other non-regular file, or a non-empty file that neither is a podcache file nor starts
    /// with podcache's "creating" magic). It is left untouched.
    Foreign {
        /// The path.
        path: PathBuf,
        /// What was found there.
        reason: String,
    },
    /// The existing file was written by a build with another layout version (and replacing
    /// was not allowed).
    VersionMismatch {
        /// The path.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version this build writes.
        expected: u32,
    },
    /// The path was replaced (renamed over or removed) again and again while this writer was
    /// locking it: another process keeps replacing it.
    Replaced {
        /// The path.
        path: PathBuf,
    },
    /// The existing file has another layout than requested and replacing was not allowed.
    LayoutMismatch {
        /// The path.
        path: PathBuf,
        /// The existing layout.
        found: String,
        /// The requested layout.
        wanted: String,
    },
    /// The options are invalid.
    InvalidOptions(String),
    /// The existing file cannot be used (wrong kind or version, truncated, corrupt header).
    Existing(OpenError),
    /// Another I/O error.
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

#[cfg(feature = "write")]
impl std::fmt::Display for CreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateError::Locked { path } => {
                write!(f, "{}: another writer holds this file (one writer per file)", path.display())
            }
            CreateError::NoSpace { path, needed, available } => {
                write!(f, "{}: no space for {needed} bytes", path.display())?;
                if let Some(a) = available {
                    write!(f, " ({a} bytes free on the volume)")?;
                }
                f.write_str("; enlarge the volume (emptyDir sizeLimit) or shrink the configuration")
            }
            CreateError::LayoutMismatch { path, found, wanted } => write!(
                f,
                "{}: existing file has layout {found}, requested {wanted}; remove it or allow replacing",
                path.display()
            ),
            CreateError::Foreign { path, reason } => write!(
                f,
                "{}: not a podcache file ({reason}); a writer never touches a file that is not empty and not \
                 podcache's own: remove it or use another name",
                path.display()
            ),
            CreateError::VersionMismatch { path, found, expected } if found < expected => write!(
                f,
                "{}: written by an older podcache (layout version {found}); this writer writes layout \
                 version {expected}: allow replacing it (replace_mismatched) or remove it, and upgrade the \
                 readers (app images) to a release that reads layout version {expected}; the HTTP API works \
                 across versions",
                path.display()
            ),
            CreateError::VersionMismatch { path, found, expected } => write!(
                f,
                "{}: written by a newer podcache (layout version {found}); this writer writes layout \
                 version {expected}: upgrade this writer (sidecar image), or allow replacing the file \
                 (replace_mismatched); the HTTP API works across versions",
                path.display()
            ),
            CreateError::Replaced { path } => {
                write!(f, "{}: the file kept being replaced while this writer was locking it", path.display())
            }
            CreateError::InvalidOptions(why) => write!(f, "invalid options: {why}"),
            CreateError::Existing(e) => write!(f, "existing file unusable: {e}"),
            CreateError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

#[cfg(feature = "write")]
impl std::error::Error for CreateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CreateError::Existing(e) => Some(e),
            CreateError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
