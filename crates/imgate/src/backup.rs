//! `imgate backup`: a consistent copy of the embedded store while the server runs.
//!
//! Each SQLite file of the data dir (the mailboxes, `imgate.sqlite3`; the WeChat state,
//! `wechat.sqlite3`; the team inbox's conversations, `inbox.sqlite3`) is copied with `VACUUM INTO`, which reads one snapshot in a single
//! read transaction: every commit before it began is in the copy, none after, and the
//! server keeps committing meanwhile (WAL readers do not block the writer). Then the media
//! files are copied; those whose records the snapshot holds were complete before it began.
//! The copy is itself a data dir: restore by pointing `data_dir` at it (or copying its
//! files into an empty one) with the server stopped. The data dir's lock is not taken:
//! the backup only reads.

use std::path::{Path, PathBuf};

use crate::config::{Config, Engine};

/// The SQLite files of a data dir, in the order they are copied.
const FILES: &[&str] = &["imgate.sqlite3", "wechat.sqlite3", "inbox.sqlite3"];

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "store.engine is redis: back up Redis itself (its RDB or AOF, see docs/operations.md) and the media directory"
    )]
    Redis,
    #[error("{0} already exists and is not empty: give a new directory")]
    NotEmpty(PathBuf),
    #[error("{0} holds no imgate store (no imgate.sqlite3): is data_dir right?")]
    NoStore(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
}

/// What a backup copied.
#[derive(Debug, Default)]
pub struct Copied {
    pub files: Vec<PathBuf>,
    pub media: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_owned(), source }
}

/// Copy `config`'s data dir (and media dir) into `out`, a new or empty directory.
pub fn run(config: &Config, out: &Path) -> Result<Copied, BackupError> {
    if config.store.engine == Engine::Redis {
        return Err(BackupError::Redis);
    }
    let data = &config.data_dir;
    if !data.join(FILES[0]).exists() {
        return Err(BackupError::NoStore(data.clone()));
    }
    if out.exists() && std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(BackupError::NotEmpty(out.to_owned()));
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut copied = Copied::default();
    for name in FILES {
        let from = data.join(name);
        if !from.exists() {
            continue;
        }
        let to = out.join(name);
        snapshot(&from, &to)?;
        copied.files.push(to);
    }
    let media = if config.wechat.media_dir.as_os_str().is_empty() {
        data.join("media")
    } else {
        config.wechat.media_dir.clone()
    };
    if media.is_dir() {
        let target = out.join("media");
        std::fs::create_dir_all(&target).map_err(io(&target))?;
        for entry in std::fs::read_dir(&media).map_err(io(&media))? {
            let entry = entry.map_err(io(&media))?;
            let name = entry.file_name();
            // Dot files are downloads still being written (renamed when complete).
            if name.to_string_lossy().starts_with('.') || !entry.path().is_file() {
                continue;
            }
            std::fs::copy(entry.path(), target.join(&name)).map_err(io(&entry.path()))?;
            copied.media += 1;
        }
    }
    Ok(copied)
}

/// One consistent copy of the SQLite file `from` at `to`.
fn snapshot(from: &Path, to: &Path) -> Result<(), BackupError> {
    let sqlite = |source| BackupError::Sqlite { path: from.to_owned(), source };
    let conn = rusqlite::Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(sqlite)?;
    // The server's checkpointer may hold the file briefly (a TRUNCATE checkpoint).
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(sqlite)?;
    let target = to.to_str().ok_or_else(|| BackupError::Io {
        path: to.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path is not UTF-8"),
    })?;
    conn.execute("VACUUM INTO ?1", [target]).map_err(sqlite)?;
    Ok(())
}
