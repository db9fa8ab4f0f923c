//! Container logs in the CRI log format, the files kubelet and `podrun logs` read
//! (`/var/log/pods/<ns>_<name>_<uid>/<container>/<restart>.log`).
//!
//! Each record is one line: `<RFC3339Nano time> <stdout|stderr> <P|F> <content>\n`. A line
//! the container writes is split into records of at most 16 KiB of content, all tagged P
//! (partial) but the last, tagged F (full). This follows containerd's CRI logger:
//! - a trailing `\r\n` counts as the line end, like `\n`;
//! - a record is cut only when a line grows past 16 KiB, so a line of exactly 16 KiB is one
//!   F record;
//! - at EOF of a stream, a pending line without its newline is written tagged P.
//!
//! Timestamps are written with nine fractional digits (fixed width, so lines sort as text);
//! readers accept any RFC 3339 time, as kubelet does.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// The most content one record carries (containerd's and kubelet's default).
pub const MAX_RECORD_CONTENT: usize = 16 * 1024;

/// Everything that can go wrong writing or reading a CRI log file.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("creating log directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening log file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing log file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading log file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line that is not a CRI log record.
    #[error("malformed CRI log line: {reason}")]
    Malformed { reason: String },
    /// A malformed record inside a log file.
    #[error("log file {path} at byte {offset}: {reason}")]
    MalformedAt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

/// Which of the container's output streams a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// Where record timestamps come from; tests pass a fixed clock.
pub trait Clock: Send {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Writes a container's stdout and stderr into one CRI log file. Owned by the pod monitor,
/// which feeds it whatever it reads from the container's pipes.
pub struct CriLogWriter {
    path: PathBuf,
    file: File,
    clock: Box<dyn Clock>,
    /// Per stream, the start of a line whose newline has not arrived yet. Never longer than
    /// `MAX_RECORD_CONTENT`.
    pending: [Vec<u8>; 2],
}

impl std::fmt::Debug for CriLogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriLogWriter")
            .field("path", &self.path)
            .field("pending_stdout", &self.pending[0].len())
            .field("pending_stderr", &self.pending[1].len())
            .finish()
    }
}

fn open_log(path: &Path) -> Result<File, LogError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| LogError::CreateDir {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    // O_APPEND: kubelet's rotation copies/truncates around us, and every record must land at
    // the end as a whole.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| LogError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Appends one record to `out`. `content` is given in pieces to avoid copying.
fn append_record(out: &mut Vec<u8>, time: &str, stream: Stream, partial: bool, content: &[&[u8]]) {
    out.extend_from_slice(time.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    for piece in content {
        out.extend_from_slice(piece);
    }
    out.push(b'\n');
}

fn format_time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Formats one CRI log record, newline included.
pub fn format_line(time: &DateTime<Utc>, stream: Stream, partial: bool, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 48);
    append_record(&mut out, &format_time(time), stream, partial, &[content]);
    out
}

impl CriLogWriter {
    /// Opens (creating it and its directories) the log file at `path` for appending.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        Self::open_with_clock(path, Box::new(SystemClock))
    }

    /// Like `open`, with timestamps taken from `clock`.
    pub fn open_with_clock(path: &Path, clock: Box<dyn Clock>) -> Result<Self, LogError> {
        Ok(CriLogWriter {
            path: path.to_path_buf(),
            file: open_log(path)?,
            clock,
            pending: [Vec::new(), Vec::new()],
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Feeds raw bytes read from the container's `stream` pipe. Complete lines are written
    /// at once; a trailing partial line is kept (up to 16 KiB, beyond which a P record is
    /// written) until its newline arrives or `flush_partial` is called.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> Result<(), LogError> {
        if data.is_empty() {
            return Ok(());
        }
        let time = format_time(&self.clock.now());
        let pending = &mut self.pending[stream.index()];
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let (mut segment, line_ends) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let segment = &rest[..i];
                    rest = &rest[i + 1..];
                    (segment, true)
                }
                None => (std::mem::take(&mut rest), false),
            };
            if line_ends {
                match segment.split_last() {
                    Some((b'\r', head)) => segment = head,
                    None if pending.last() == Some(&b'\r') => {
                        pending.pop();
                    }
                    _ => {}
                }
            }
            // Cut a P record whenever the line would grow past the limit.
            while pending.len() + segment.len() > MAX_RECORD_CONTENT {
                let room = MAX_RECORD_CONTENT - pending.len();
                append_record(
                    &mut out,
                    &time,
                    stream,
                    true,
                    &[pending.as_slice(), &segment[..room]],
                );
                pending.clear();
                segment = &segment[room..];
            }
            if line_ends {
                append_record(
                    &mut out,
                    &time,
                    stream,
                    false,
                    &[pending.as_slice(), segment],
                );
                pending.clear();
            } else {
                pending.extend_from_slice(segment);
            }
        }
        self.append(&out)
    }

    /// At EOF of `stream`: writes its pending partial line, if any, tagged P as containerd
    /// does (the line never got its newline).
    pub fn flush_partial(&mut self, stream: Stream) -> Result<(), LogError> {
        let pending = std::mem::take(&mut self.pending[stream.index()]);
        if pending.is_empty() {
            return Ok(());
        }
        let time = format_time(&self.clock.now());
        let mut out = Vec::with_capacity(pending.len() + 48);
        append_record(&mut out, &time, stream, true, &[&pending]);
        self.append(&out)
    }

    /// Reopens the file at the same path, for CRI ReopenContainerLog after kubelet rotated
    /// it. Pending partial lines are kept and continue in the new file.
    pub fn reopen(&mut self) -> Result<(), LogError> {
        self.file = open_log(&self.path)?;
        tracing::debug!(path = %self.path.display(), "reopened container log");
        Ok(())
    }

    fn append(&mut self, out: &[u8]) -> Result<(), LogError> {
        if out.is_empty() {
            return Ok(());
        }
        self.file.write_all(out).map_err(|source| LogError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// One record, or a line reassembled from records by `read_entries`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub time: DateTime<Utc>,
    pub stream: Stream,
    /// The line's newline has not been seen (a P record, or the tail of a line still being
    /// written): print the content without a newline.
    pub partial: bool,
    pub content: Vec<u8>,
}

fn malformed(reason: impl Into<String>) -> LogError {
    LogError::Malformed {
        reason: reason.into(),
    }
}

/// Splits off the field up to the next space.
fn field<'a>(rest: &mut &'a [u8], name: &str) -> Result<&'a [u8], LogError> {
    let i = rest
        .iter()
        .position(|&b| b == b' ')
        .ok_or_else(|| malformed(format!("missing {name}")))?;
    let field = &rest[..i];
    *rest = &rest[i + 1..];
    Ok(field)
}

/// Parses one record (with or without its trailing newline).
pub fn parse_line(line: &[u8]) -> Result<LogEntry, LogError> {
    let mut rest = line.strip_suffix(b"\n").unwrap_or(line);
    let time = field(&mut rest, "timestamp")?;
    let time = std::str::from_utf8(time)
        .ok()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .ok_or_else(|| malformed(format!("bad timestamp {:?}", String::from_utf8_lossy(time))))?
        .with_timezone(&Utc);
    let stream = match field(&mut rest, "stream")? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        other => {
            return Err(malformed(format!(
                "bad stream {:?}",
                String::from_utf8_lossy(other)
            )))
        }
    };
    // The CRI reserves ':'-separated extra tags after the first; the first is P or F.
    let tags = field(&mut rest, "tag")?;
    let partial = match tags.split(|&b| b == b':').next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => {
            return Err(malformed(format!(
                "bad tag {:?}",
                String::from_utf8_lossy(tags)
            )))
        }
    };
    Ok(LogEntry {
        time,
        stream,
        partial,
        content: rest.to_vec(),
    })
}

/// Reads the CRI log at `path` from byte `offset` and reassembles lines from their P and F
/// records. Returns the entries and the offset to continue from.
///
/// A line whose records end with P at the end of the file (still being written, or cut by
/// EOF) is returned as an entry with `partial: true` and counted as read, so a follower
/// prints it at once and later gets the rest of the line as its own entry. A last line
/// without its newline (a record being appended right now) is left for the next call.
pub fn read_entries(path: &Path, offset: u64) -> Result<(Vec<LogEntry>, u64), LogError> {
    let read_err = |source| LogError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    file.seek(SeekFrom::Start(offset)).map_err(read_err)?;
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(read_err)?;

    let mut entries = Vec::new();
    // Per stream: the line being reassembled and the position of its first record.
    let mut open: [Option<(usize, LogEntry)>; 2] = [None, None];
    let mut consumed = 0;
    let mut records = 0;
    while let Some(len) = data[consumed..].iter().position(|&b| b == b'\n') {
        let line = &data[consumed..consumed + len];
        let record = parse_line(line).map_err(|e| LogError::MalformedAt {
            path: path.to_path_buf(),
            offset: offset + consumed as u64,
            reason: match e {
                LogError::Malformed { reason } => reason,
                other => other.to_string(),
            },
        })?;
        consumed += len + 1;
        records += 1;

        let slot = &mut open[record.stream.index()];
        match slot {
            Some((_, line)) => {
                line.content.extend_from_slice(&record.content);
                line.partial = record.partial;
            }
            None => *slot = Some((records, record)),
        }
        if slot.as_ref().is_some_and(|(_, l)| !l.partial) {
            entries.push(slot.take().expect("checked above").1);
        }
    }
    let mut unfinished: Vec<_> = open.into_iter().flatten().collect();
    unfinished.sort_by_key(|(first, _)| *first);
    entries.extend(unfinished.into_iter().map(|(_, line)| line));
    Ok((entries, offset + consumed as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[derive(Debug)]
    struct FixedClock(DateTime<Utc>);

    impl Clock for FixedClock {
        fn now(&self) -> DateTime<Utc> {
            self.0
        }
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2016, 10, 6, 0, 17, 9).unwrap()
            + chrono::Duration::nanoseconds(669_794_202)
    }

    const TS: &str = "2016-10-06T00:17:09.669794202Z";

    fn writer(dir: &tempfile::TempDir) -> (CriLogWriter, PathBuf) {
        let path = dir.path().join("ns_pod_uid/app/0.log");
        let w = CriLogWriter::open_with_clock(&path, Box::new(FixedClock(t0()))).unwrap();
        (w, path)
    }

    fn contents(path: &Path) -> String {
        String::from_utf8(std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn full_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, path) = writer(&dir);
        w.write(Stream::Stdout, b"hello\nworld\r\n\n").unwrap();
        assert_eq!(
            contents(&path),
            format!("{TS} stdout F hello\n{TS} stdout F world\n{TS} stdout F \n")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn lines_split_across_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, path) = writer(&dir);
        w.write(Stream::Stdout, b"hel").unwrap();
        assert_eq!(contents(&path), "");
        w.write(Stream::Stdout, b"lo\nwor").unwrap();
        w.write(Stream::Stdout, b"ld\r").unwrap();
        w.write(Stream::Stdout, b"\n").unwrap();
        w.write(Stream::Stdout, b"tail").unwrap();
        w.flush_partial(Stream::Stdout).unwrap();
        w.flush_partial(Stream::Stdout).unwrap();
        assert_eq!(
            contents(&path),
            format!("{TS} stdout F hello\n{TS} stdout F world\n{TS} stdout P tail\n")
        );
    }

    #[test]
    fn long_lines_are_chunked() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, path) = writer(&dir);
        let max = MAX_RECORD_CONTENT;
        // Exactly the limit: one F record.
        let mut exact = vec![b'a'; max];
        exact.push(b'\n');
        w.write(Stream::Stdout, &exact).unwrap();
        // 2.5 times the limit, fed in odd pieces: P, P, F.
        let long: Vec<u8> = (0..max * 5 / 2).map(|i| b'a' + (i % 26) as u8).collect();
        for piece in long.chunks(5000) {
            w.write(Stream::Stderr, piece).unwrap();
        }
        w.write(Stream::Stderr, b"\n").unwrap();

        let text = contents(&path);
        let records: Vec<&str> = text.lines().collect();
        assert_eq!(records.len(), 4);
        assert_eq!(records[0], format!("{TS} stdout F {}", "a".repeat(max)));
        let prefix = |tag: &str| format!("{TS} stderr {tag} ");
        assert!(records[1].starts_with(&prefix("P")));
        assert!(records[2].starts_with(&prefix("P")));
        assert!(records[3].starts_with(&prefix("F")));
        let joined: String = records[1..]
            .iter()
            .map(|r| &r[prefix("P").len()..])
            .collect();
        assert_eq!(joined.as_bytes(), &long[..]);
        assert_eq!(records[1].len() - prefix("P").len(), max);
        assert_eq!(records[3].len() - prefix("F").len(), max / 2);

        let (entries, end) = read_entries(&path, 0).unwrap();
        assert_eq!(end, text.len() as u64);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].content, long);
        assert!(!entries[1].partial);
    }

    #[test]
    fn big_write_without_newline_at_eof() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, path) = writer(&dir);
        w.write(Stream::Stdout, &vec![b'x'; MAX_RECORD_CONTENT + 1])
            .unwrap();
        assert_eq!(contents(&path).lines().count(), 1);
        w.flush_partial(Stream::Stdout).unwrap();
        let text = contents(&path);
        assert_eq!(
            text.lines().nth(1),
            Some(format!("{TS} stdout P x").as_str())
        );
    }

    #[test]
    fn streams_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, path) = writer(&dir);
        w.write(Stream::Stdout, b"out-").unwrap();
        w.write(Stream::Stderr, b"err-").unwrap();
        w.write(Stream::Stderr, b"line\n").unwrap();
        w.write(Stream::Stdout, b"line\nnext\n").unwrap();
        assert_eq!(
            contents(&path),
            format!("{TS} stderr F err-line\n{TS} stdout F out-line\n{TS} stdout F next\n")
        );
    }

    #[test]
    fn reopen_continues_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, path) = writer(&dir);
        w.write(Stream::Stdout, b"before\npart").unwrap();
        let rotated = path.with_extension("log.1");
        std::fs::rename(&path, &rotated).unwrap();
        w.reopen().unwrap();
        w.write(Stream::Stdout, b"ial\n").unwrap();
        assert_eq!(contents(&rotated), format!("{TS} stdout F before\n"));
        assert_eq!(contents(&path), format!("{TS} stdout F partial\n"));
    }

    #[test]
    fn parse_round_trip() {
        let line = format_line(&t0(), Stream::Stderr, true, b"some content  with spaces");
        assert_eq!(
            line,
            format!("{TS} stderr P some content  with spaces\n").into_bytes()
        );
        let entry = parse_line(&line).unwrap();
        assert_eq!(
            entry,
            LogEntry {
                time: t0(),
                stream: Stream::Stderr,
                partial: true,
                content: b"some content  with spaces".to_vec(),
            }
        );
        // Go's RFC3339Nano trims zeros; other writers may use offsets or extra tags.
        let e = parse_line(b"2016-10-06T00:17:09.5+02:00 stdout F:x hi").unwrap();
        assert_eq!(
            e.time,
            Utc.with_ymd_and_hms(2016, 10, 5, 22, 17, 9).unwrap()
                + chrono::Duration::milliseconds(500)
        );
        assert!(!e.partial);
        assert_eq!(e.content, b"hi");
        assert_eq!(
            parse_line(format!("{TS} stdout F \n").as_bytes())
                .unwrap()
                .content,
            b""
        );
    }

    #[test]
    fn malformed_lines() {
        for (line, want) in [
            (&b""[..], "missing timestamp"),
            (b"hello", "missing timestamp"),
            (b"yesterday stdout F hi", "bad timestamp"),
            (b"2016-10-06T00:17:09Z stdin F hi", "bad stream"),
            (b"2016-10-06T00:17:09Z stdout", "missing stream"),
            (b"2016-10-06T00:17:09Z stdout X hi", "bad tag"),
            (b"2016-10-06T00:17:09Z stdout F", "missing tag"),
        ] {
            let err = parse_line(line).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{:?}: {err}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn read_entries_follows() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, path) = writer(&dir);
        w.write(Stream::Stdout, b"one\n").unwrap();
        w.write(Stream::Stderr, &vec![b'e'; MAX_RECORD_CONTENT + 3])
            .unwrap();
        w.write(Stream::Stdout, b"two\n").unwrap();

        let (entries, offset) = read_entries(&path, 0).unwrap();
        let summary: Vec<_> = entries
            .iter()
            .map(|e| (e.stream, e.partial, e.content.len()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Stream::Stdout, false, 3),
                (Stream::Stdout, false, 3),
                (Stream::Stderr, true, MAX_RECORD_CONTENT),
            ]
        );
        assert_eq!(offset, std::fs::metadata(&path).unwrap().len());

        // The follower picks up only what came after, including the rest of the line.
        w.write(Stream::Stderr, b"\n").unwrap();
        let (entries, next) = read_entries(&path, offset).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].content, b"eee");
        assert!(!entries[0].partial);

        // A record being appended (no newline yet) is left for later.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(format!("{TS} stdout F half").as_bytes())
            .unwrap();
        let (entries, again) = read_entries(&path, next).unwrap();
        assert!(entries.is_empty());
        assert_eq!(again, next);
    }

    #[test]
    fn read_entries_reports_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, format!("{TS} stdout F ok\ngarbage\n")).unwrap();
        let err = read_entries(&path, 0).unwrap_err();
        match &err {
            LogError::MalformedAt { offset, .. } => {
                assert_eq!(*offset, (TS.len() + 13) as u64)
            }
            other => panic!("unexpected {other}"),
        }
        assert!(matches!(
            read_entries(&dir.path().join("none.log"), 0),
            Err(LogError::Read { .. })
        ));
    }
}
