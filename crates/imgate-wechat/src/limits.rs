//! What WeChat takes as temporary media (`cgi-bin/media/upload`): the formats, told by
//! their bytes rather than by what a client declares, and the size and length limits.
//! Checked when an agent uploads, so that a file WeChat would refuse is refused at once,
//! in words, instead of failing at send time.

/// A format WeChat takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg,
    Gif,
    Amr,
    AmrWb,
    Mp3,
    Mp4,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Png => "image/png",
            Format::Jpeg => "image/jpeg",
            Format::Gif => "image/gif",
            Format::Amr => "audio/amr",
            Format::AmrWb => "audio/amr-wb",
            Format::Mp3 => "audio/mpeg",
            Format::Mp4 => "video/mp4",
        }
    }

    /// WeChat's media type for it (`type=` of the upload).
    pub fn kind(self) -> &'static str {
        match self {
            Format::Png | Format::Jpeg | Format::Gif => "image",
            Format::Amr | Format::AmrWb | Format::Mp3 => "voice",
            Format::Mp4 => "video",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Png => "a PNG image",
            Format::Jpeg => "a JPEG image",
            Format::Gif => "a GIF image",
            Format::Amr => "AMR audio",
            Format::AmrWb => "AMR-WB audio",
            Format::Mp3 => "MP3 audio",
            Format::Mp4 => "an MP4 video",
        }
    }
}

/// WeChat's limits for temporary media.
pub const IMAGE_MAX: usize = 10 << 20;
pub const VOICE_MAX: usize = 2 << 20;
pub const VIDEO_MAX: usize = 10 << 20;
pub const THUMB_MAX: usize = 64 << 10;
/// The longest voice message, in milliseconds.
pub const VOICE_MAX_MS: u64 = 60_000;

/// The format of `bytes`, by their first bytes.
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    let b = bytes;
    Some(if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Format::Png
    } else if b.starts_with(b"\xff\xd8\xff") {
        Format::Jpeg
    } else if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        Format::Gif
    } else if b.starts_with(b"#!AMR\n") {
        Format::Amr
    } else if b.starts_with(b"#!AMR-WB\n") {
        Format::AmrWb
    } else if b.starts_with(b"ID3")
        || (b.len() >= 2 && b[0] == 0xFF && b[1] & 0xE0 == 0xE0 && (b[1] >> 1) & 3 == 1)
    {
        // An ID3 tag, or an MPEG audio frame sync of layer III.
        Format::Mp3
    } else if b.len() >= 12 && &b[4..8] == b"ftyp" && &b[8..12] != b"qt  " {
        // ISO base media with any brand but QuickTime's.
        Format::Mp4
    } else {
        return None;
    })
}

/// How long AMR audio plays: every frame is 20 ms, and its size follows from the mode in
/// its first byte (RFC 4867 §5, storage format). `None` when it is not AMR.
pub fn amr_duration_ms(bytes: &[u8]) -> Option<u64> {
    // Frame sizes with their header byte, by frame type (as ffmpeg's amr demuxer).
    const NB: [usize; 16] = [13, 14, 16, 18, 20, 21, 27, 32, 6, 1, 1, 1, 1, 1, 1, 1];
    const WB: [usize; 16] = [18, 24, 33, 37, 41, 47, 51, 59, 61, 6, 1, 1, 1, 1, 1, 1];
    let (mut at, sizes) = if bytes.starts_with(b"#!AMR-WB\n") {
        (9, &WB)
    } else if bytes.starts_with(b"#!AMR\n") {
        (6, &NB)
    } else {
        return None;
    };
    let mut frames = 0u64;
    while let Some(&head) = bytes.get(at) {
        at += sizes[usize::from((head >> 3) & 0x0F)];
        frames += 1;
    }
    Some(frames * 20)
}

/// Why WeChat would refuse an upload: 415 for the type, 413 for the size or length.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("{0}")]
    Type(String),
    #[error("{0}")]
    Size(String),
}

/// What an accepted upload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    pub format: Format,
    /// `image`, `voice`, `video` or `thumb`.
    pub kind: &'static str,
}

const TAKES: &str = "WeChat takes images as PNG, JPEG or GIF (up to 10 MB), voice as AMR or MP3 \
                     (up to 2 MB and 60 s), video as MP4 (up to 10 MB), thumbnails as JPEG (up to 64 KB)";

/// Check an upload against WeChat's rules. `declared`: its Content-Type, which must name
/// the kind its bytes are (a PNG sent as `audio/amr` is a client's mistake);
/// `application/octet-stream` or nothing leaves it to the bytes. `thumb`: the upload is a
/// video's thumbnail.
pub fn check(bytes: &[u8], declared: &str, thumb: bool) -> Result<Checked, Refused> {
    let Some(format) = sniff(bytes) else {
        return Err(Refused::Type(format!("{TAKES}: these bytes are none of them (declared {declared:?})")));
    };
    let declared_kind = match declared {
        "" | "application/octet-stream" => None,
        "image/png" | "image/jpeg" | "image/jpg" | "image/pjpeg" | "image/gif" => Some("image"),
        "audio/amr" | "audio/amr-wb" | "audio/mpeg" | "audio/mp3" => Some("voice"),
        "video/mp4" => Some("video"),
        other => {
            return Err(Refused::Type(format!("{TAKES}: {other:?} is none of them")));
        }
    };
    if declared_kind.is_some_and(|k| k != format.kind()) {
        return Err(Refused::Type(format!(
            "the upload is declared {declared:?} but its bytes are {}: send it with its own Content-Type",
            format.name()
        )));
    }
    let n = bytes.len();
    if thumb {
        if format != Format::Jpeg {
            return Err(Refused::Type(format!(
                "WeChat takes a thumbnail only as JPEG (up to 64 KB); this is {}",
                format.name()
            )));
        }
        if n > THUMB_MAX {
            return Err(Refused::Size(format!(
                "WeChat takes a thumbnail of at most 64 KB ({THUMB_MAX} bytes); this one is {n} bytes"
            )));
        }
        return Ok(Checked { format, kind: "thumb" });
    }
    let (max, what) = match format.kind() {
        "image" => (IMAGE_MAX, "an image of at most 10 MB"),
        "voice" => (VOICE_MAX, "a voice message of at most 2 MB"),
        _ => (VIDEO_MAX, "a video of at most 10 MB"),
    };
    if n > max {
        return Err(Refused::Size(format!("WeChat takes {what} ({max} bytes); this one is {n} bytes")));
    }
    // MP3's length would need its frames decoded (bit rates vary); WeChat checks it.
    if let Some(ms) = amr_duration_ms(bytes)
        && ms > VOICE_MAX_MS
    {
        return Err(Refused::Size(format!(
            "WeChat takes a voice message of at most 60 seconds; this one plays {}.{:02} s",
            ms / 1000,
            ms % 1000 / 10
        )));
    }
    Ok(Checked { format, kind: format.kind() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `seconds` of AMR-NB at 12.2 kbit/s: 50 frames of 32 bytes a second.
    pub fn amr(seconds: usize) -> Vec<u8> {
        let mut v = b"#!AMR\n".to_vec();
        for _ in 0..seconds * 50 {
            v.push(0x3C);
            v.extend([0u8; 31]);
        }
        v
    }

    fn mp4(len: usize) -> Vec<u8> {
        let mut v = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom".to_vec();
        v.resize(len, 0);
        v
    }

    fn sized(prefix: &[u8], len: usize) -> Vec<u8> {
        let mut v = prefix.to_vec();
        v.resize(len, 7);
        v
    }

    #[test]
    fn amr_plays_20_ms_a_frame() {
        assert_eq!(amr_duration_ms(&amr(60)), Some(60_000));
        assert_eq!(amr_duration_ms(&amr(61)), Some(61_000));
        // Mode 4.75k (13 bytes), then a NO_DATA frame (1 byte): 40 ms.
        let mut v = b"#!AMR\n".to_vec();
        v.push(0x04);
        v.extend([0u8; 12]);
        v.push(0x7C);
        assert_eq!(amr_duration_ms(&v), Some(40));
        assert_eq!(amr_duration_ms(b"ID3"), None);
    }

    #[test]
    fn what_wechat_takes() {
        type Want = Result<(&'static str, &'static str), &'static str>;
        let cases: Vec<(&str, Vec<u8>, &str, bool, Want)> = vec![
            ("png", sized(b"\x89PNG\r\n\x1a\n", 100), "image/png", false, Ok(("image", "image/png"))),
            ("jpeg as jpg", sized(b"\xff\xd8\xff\xe0", 100), "image/jpg", false, Ok(("image", "image/jpeg"))),
            ("gif", sized(b"GIF89a", 100), "image/gif", false, Ok(("image", "image/gif"))),
            ("amr", amr(3), "audio/amr", false, Ok(("voice", "audio/amr"))),
            ("mp3", sized(b"ID3\x04", 100), "audio/mpeg", false, Ok(("voice", "audio/mpeg"))),
            ("mp3 frame", sized(b"\xff\xfb\x90", 100), "audio/mp3", false, Ok(("voice", "audio/mpeg"))),
            ("mp4", mp4(100), "video/mp4", false, Ok(("video", "video/mp4"))),
            ("left to the bytes", mp4(100), "", false, Ok(("video", "video/mp4"))),
            ("thumb", sized(b"\xff\xd8\xff", THUMB_MAX), "image/jpeg", true, Ok(("thumb", "image/jpeg"))),
            ("webp", sized(b"RIFF\0\0\0\0WEBPVP8 ", 100), "image/webp", false, Err("415")),
            ("text as png", b"hello, world".to_vec(), "image/png", false, Err("415")),
            ("png as amr", sized(b"\x89PNG\r\n\x1a\n", 100), "audio/amr", false, Err("415")),
            ("quicktime", sized(b"\0\0\0\x14ftypqt  ", 100), "video/mp4", false, Err("415")),
            ("png thumb", sized(b"\x89PNG\r\n\x1a\n", 100), "image/png", true, Err("415")),
            ("image over 10 MB", sized(b"GIF89a", IMAGE_MAX + 1), "image/gif", false, Err("413")),
            ("image at 10 MB", sized(b"GIF89a", IMAGE_MAX), "image/gif", false, Ok(("image", "image/gif"))),
            ("voice over 2 MB", sized(b"ID3", VOICE_MAX + 1), "audio/mpeg", false, Err("413")),
            ("amr over 60 s", amr(61), "audio/amr", false, Err("413")),
            ("video over 10 MB", mp4(VIDEO_MAX + 1), "video/mp4", false, Err("413")),
            ("thumb over 64 KB", sized(b"\xff\xd8\xff", THUMB_MAX + 1), "image/jpeg", true, Err("413")),
        ];
        for (name, bytes, declared, thumb, want) in cases {
            let got = match check(&bytes, declared, thumb) {
                Ok(c) => Ok((c.kind, c.format.content_type())),
                Err(Refused::Type(_)) => Err("415"),
                Err(Refused::Size(_)) => Err("413"),
            };
            assert_eq!(got, want, "{name}");
        }
    }

    /// Untrusted bytes: every prefix of every sample, and each with any first byte, is
    /// answered without a panic.
    #[test]
    fn no_input_panics() {
        let samples =
            [amr(1), mp4(40), sized(b"\x89PNG\r\n\x1a\n", 20), sized(b"#!AMR-WB\n", 40), sized(b"ID3", 8)];
        for s in &samples {
            for n in 0..=s.len() {
                for declared in ["", "image/png", "audio/amr", "video/mp4", "text/html"] {
                    let _ = check(&s[..n], declared, n % 2 == 0);
                }
                let _ = amr_duration_ms(&s[..n]);
            }
            for b in 0..=255u8 {
                let mut v = s.clone();
                if let Some(last) = v.last_mut() {
                    *last = b;
                }
                let _ = check(&v, "", false);
                let _ = amr_duration_ms(&v);
            }
        }
    }

    #[test]
    fn refusals_say_the_rule() {
        let e = check(&amr(61), "audio/amr", false).unwrap_err().to_string();
        assert!(e.contains("60 seconds") && e.contains("61.00 s"), "{e}");
        let e = check(b"RIFF\0\0\0\0WEBPVP8 ", "image/webp", false).unwrap_err().to_string();
        assert!(e.contains("PNG, JPEG or GIF") && e.contains("image/webp"), "{e}");
    }
}
