//! One process per data directory.
//!
//! Two processes on one `data_dir` each keep their own idea of every mailbox's last seq,
//! hand out the same seqs, and a restart finds the journal contradicting itself. So the
//! first process takes an exclusive `flock` on `data_dir/LOCK` for as long as it runs and
//! writes its PID there; a second one is refused and told whose lock it is. The kernel
//! drops the lock when the process dies, however it dies, so a `kill -9` leaves nothing
//! to clean up.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{path} is held by another imgate process (pid {pid}): one process per data_dir; \
         stop it or give this one another --data-dir"
    )]
    Held { path: PathBuf, pid: String },
    #[error("cannot lock {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Held while the process uses the directory; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Lock `dir` (creating it if needed), or say who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let path = dir.join("LOCK");
        let io = |source| LockError::Io { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == Errno::WOULDBLOCK => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = match pid.trim() {
                    "" => "unknown".to_owned(),
                    p => p.to_owned(),
                };
                return Err(LockError::Held { path, pid });
            }
            Err(e) => return Err(io(e.into())),
        }
        // Ours now: say whose it is, for the next process that tries.
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::acquire(dir.path()).unwrap();
        // flock is per open file, so a second open in this process conflicts as another
        // process would.
        match DirLock::acquire(dir.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        DirLock::acquire(dir.path()).unwrap();
    }
}
