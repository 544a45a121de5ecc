//! Voice a browser can play. WeChat sends a follower's voice as AMR-NB, which no browser
//! decodes; the console asks for it as Opus in Ogg (`GET P/media/{id}?format=ogg`), and
//! `ffmpeg` transcodes it then, once: the result is kept beside the original (`{id}.ogg`,
//! removed with it by retention), and the original stays as WeChat sent it.
//!
//! `ffmpeg` is found on `PATH` (Debian: `apt install ffmpeg`). Without it everything else
//! works and voice is offered as a download; the answer says what to install.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::sync::Semaphore;

/// Transcodes at once: each is an ffmpeg process (a few ms of CPU per second of voice).
static RUNNING: Semaphore = Semaphore::const_new(2);
/// WeChat's voice lasts at most 60 s; a transcode taking this long is stuck.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Opus at this rate keeps speech clear: 60 s of voice is about 180 KB.
const BITRATE: &str = "24k";

#[derive(Debug, thiserror::Error)]
pub enum VoiceError {
    #[error("voice playback needs ffmpeg on the gateway's PATH (Debian: apt install ffmpeg)")]
    NoFfmpeg,
    #[error("this voice message could not be transcoded: {0}")]
    Failed(String),
    #[error("voice transcoding: {0}")]
    Io(#[from] std::io::Error),
}

/// Where the playable copy of `original` lives.
pub fn ogg_path(original: &Path) -> PathBuf {
    let mut p = original.as_os_str().to_owned();
    p.push(".ogg");
    PathBuf::from(p)
}

/// The playable copy of the voice file `original`, transcoded now if it is not yet.
pub async fn playable(original: &Path) -> Result<PathBuf, VoiceError> {
    let dst = ogg_path(original);
    if tokio::fs::try_exists(&dst).await? {
        return Ok(dst);
    }
    let _permit = RUNNING.acquire().await.map_err(|e| VoiceError::Failed(e.to_string()))?;
    // Another request may have made it while this one waited.
    if tokio::fs::try_exists(&dst).await? {
        return Ok(dst);
    }
    // Written aside, then renamed: a reader never sees half a file, and two transcodes of
    // one file (two nodes sharing the media dir) each write their own.
    let tmp = {
        let mut p = dst.as_os_str().to_owned();
        p.push(format!(".{}.tmp", uuid::Uuid::now_v7().simple()));
        PathBuf::from(p)
    };
    let run = tokio::process::Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-i"])
        .arg(original)
        .args(["-vn", "-c:a", "libopus", "-b:a", BITRATE, "-f", "ogg"])
        .arg(&tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(TIMEOUT, run).await {
        Err(_) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(VoiceError::Failed(format!("ffmpeg took more than {TIMEOUT:?}")));
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Err(VoiceError::NoFfmpeg),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let _ = tokio::fs::remove_file(&tmp).await;
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why.lines().last().unwrap_or("ffmpeg failed").chars().take(200).collect::<String>();
        return Err(VoiceError::Failed(why));
    }
    tokio::fs::rename(&tmp, &dst).await?;
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_playable_copy_sits_beside_the_original() {
        assert_eq!(ogg_path(Path::new("/m/abc")), PathBuf::from("/m/abc.ogg"));
    }
}
