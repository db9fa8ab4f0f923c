//! Container logs as kubelet serves them from the CRI log file: one record per line,
//! `<RFC3339Nano> <stream> <P|F>[:flags] <text>`, where `P` marks a chunk of a line the
//! runtime split and `F` the chunk that ends it. The chunks of a line are joined; the
//! options are those of `PodLogOptions` (tail, since, timestamps, byte limit, follow).

use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, FixedOffset, Utc};
use tokio::sync::mpsc;

use super::BoxFuture;

/// The query options of `/containerLogs`, as `PodLogOptions` names them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    /// The last n lines only.
    pub tail_lines: Option<u64>,
    /// Only lines written at or after this time (`sinceSeconds` or `sinceTime`).
    pub since: Option<DateTime<Utc>>,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
}

/// A boolean query parameter as Kubernetes decodes one: absent is false, and any value
/// but `0` and `false` is true.
pub fn query_bool(v: Option<&str>) -> bool {
    match v {
        None => false,
        Some(v) => v != "0" && !v.eq_ignore_ascii_case("false"),
    }
}

impl LogOptions {
    /// Reads the options from query pairs; `now` anchors `sinceSeconds`.
    pub fn parse(pairs: &[(String, String)], now: DateTime<Utc>) -> Result<LogOptions, String> {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.as_str())
        };
        let int = |k: &str, min: i64| -> Result<Option<i64>, String> {
            match get(k).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => match v.parse::<i64>() {
                    Ok(n) if n >= min => Ok(Some(n)),
                    Ok(_) => Err(format!("{k} must be at least {min}, not {v}")),
                    Err(_) => Err(format!("{k}: {v:?} is not an integer")),
                },
            }
        };
        let since_seconds = int("sinceSeconds", 1)?;
        let since_time = match get("sinceTime").filter(|v| !v.is_empty()) {
            None => None,
            Some(t) => Some(
                DateTime::parse_from_rfc3339(t)
                    .map_err(|e| format!("sinceTime: {t:?} is not an RFC 3339 time: {e}"))?
                    .with_timezone(&Utc),
            ),
        };
        if since_seconds.is_some() && since_time.is_some() {
            return Err("at most one of sinceTime or sinceSeconds may be specified".into());
        }
        let since = since_time.or_else(|| {
            since_seconds.map(|s| now - chrono::Duration::seconds(s.min(i64::from(u32::MAX))))
        });
        Ok(LogOptions {
            follow: query_bool(get("follow")),
            previous: query_bool(get("previous")),
            timestamps: query_bool(get("timestamps")),
            tail_lines: int("tailLines", 0)?.map(|n| n as u64),
            since,
            limit_bytes: int("limitBytes", 1)?.map(|n| n as u64),
        })
    }
}

/// One line of a CRI log file.
#[derive(Clone, Debug, PartialEq)]
pub struct Record<'a> {
    /// The timestamp as the runtime wrote it.
    pub timestamp: &'a str,
    pub time: DateTime<FixedOffset>,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// A chunk of a line that goes on in the next record.
    pub partial: bool,
    pub text: &'a [u8],
}

/// Parses one line of a CRI log file (without its newline); None when it is not one.
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let timestamp = std::str::from_utf8(fields.next()?).ok()?;
    let stream = std::str::from_utf8(fields.next()?).ok()?;
    let tag = fields.next()?;
    // A record whose text is empty may lack the space after the tag.
    let text = fields.next().unwrap_or(&[]);
    if !matches!(stream, "stdout" | "stderr") {
        return None;
    }
    // The tag is `P` or `F`, possibly followed by `:`-separated flags.
    let partial = match tag.split(|b| *b == b':').next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    let time = DateTime::parse_from_rfc3339(timestamp).ok()?;
    Some(Record {
        timestamp,
        time,
        stream,
        partial,
        text,
    })
}

/// Whether a raw line ends a logical line: a full record, or one that is not a record
/// at all (skipped, but counted as ended so tailing stays in step).
fn ends_line(raw: &[u8]) -> bool {
    parse_record(raw).is_none_or(|r| !r.partial)
}

/// Turns records into the bytes kubelet sends: chunks joined, a newline after each
/// line, the first chunk's timestamp in front when asked, lines before `since` left
/// out, and the output cut at the byte limit.
pub struct Formatter {
    since: Option<DateTime<Utc>>,
    timestamps: bool,
    remaining: Option<u64>,
    /// The next record starts a line.
    line_start: bool,
    /// The line being written is left out (older than `since`).
    skipping: bool,
}

impl Formatter {
    pub fn new(opts: &LogOptions) -> Formatter {
        Formatter {
            since: opts.since,
            timestamps: opts.timestamps,
            remaining: opts.limit_bytes,
            line_start: true,
            skipping: false,
        }
    }

    /// Whether the byte limit has been reached.
    pub fn done(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Appends the output of one record to `out`.
    pub fn push(&mut self, r: &Record<'_>, out: &mut Vec<u8>) {
        if self.done() {
            return;
        }
        if self.line_start {
            self.skipping = self.since.is_some_and(|s| r.time < s);
        }
        if !self.skipping {
            let mark = out.len();
            if self.line_start && self.timestamps {
                out.extend_from_slice(r.timestamp.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(r.text);
            if !r.partial {
                out.push(b'\n');
            }
            if let Some(left) = &mut self.remaining {
                let added = (out.len() - mark) as u64;
                if added >= *left {
                    out.truncate(mark + *left as usize);
                    *left = 0;
                } else {
                    *left -= added;
                }
            }
        }
        self.line_start = !r.partial;
    }

    /// Formats every complete raw line of `buf` and returns how many bytes were used
    /// (an unfinished last line is left for later).
    pub fn push_lines(&mut self, buf: &[u8], out: &mut Vec<u8>) -> usize {
        let mut used = 0;
        while let Some(i) = buf[used..].iter().position(|b| *b == b'\n') {
            let raw = &buf[used..used + i];
            used += i + 1;
            match parse_record(raw) {
                Some(r) => self.push(&r, out),
                None => {
                    tracing::debug!(line = %String::from_utf8_lossy(raw), "not a CRI log record")
                }
            }
            if self.done() {
                break;
            }
        }
        used
    }
}

const BLOCK: usize = 64 * 1024;

/// The offset just after the file's last newline at or before `len`: records after it
/// are still being written.
fn complete_end(f: &std::fs::File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut block = vec![0u8; BLOCK];
    while end > 0 {
        let n = BLOCK.min(end as usize);
        let at = end - n as u64;
        f.read_exact_at(&mut block[..n], at)?;
        if let Some(i) = block[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(at + i as u64 + 1);
        }
        end = at;
    }
    Ok(0)
}

/// Where reading starts so that the last `n` lines are shown: the start of the n-th
/// logical line from the end of the complete records (chunks of one line count once).
/// Scans backwards, so a long file costs only what is shown.
pub fn tail_start(f: &std::fs::File, len: u64, n: u64) -> io::Result<u64> {
    let end = complete_end(f, len)?;
    if n == 0 {
        return Ok(end);
    }
    // `carry` holds the bytes [pos, pos + carry.len()) not yet split into raw lines;
    // it always ends with a newline.
    let mut pos = end;
    let mut carry: Vec<u8> = Vec::new();
    let mut starts = 0u64;
    while pos > 0 {
        let n_read = BLOCK.min(pos as usize);
        pos -= n_read as u64;
        let mut block = vec![0u8; n_read];
        f.read_exact_at(&mut block, pos)?;
        block.extend_from_slice(&carry);
        carry = block;
        // Split off whole raw lines from the back while one starts inside `carry`.
        while carry.len() > 1 {
            let Some(i) = carry[..carry.len() - 1].iter().rposition(|b| *b == b'\n') else {
                break;
            };
            let line_end = pos + carry.len() as u64;
            let raw = &carry[i + 1..carry.len() - 1];
            // The line after a full record starts a logical line.
            if ends_line(raw) && line_end < end {
                starts += 1;
                if starts == n {
                    return Ok(line_end);
                }
            }
            carry.truncate(i + 1);
        }
    }
    // What is left is the file's first raw line.
    if !carry.is_empty() && ends_line(&carry[..carry.len() - 1]) && (carry.len() as u64) < end {
        starts += 1;
        if starts == n {
            return Ok(carry.len() as u64);
        }
    }
    Ok(0)
}

/// Reads the whole file once (no follow): the formatted output of its complete records.
pub fn read_all(path: &Path, opts: &LogOptions) -> io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = match opts.tail_lines {
        Some(n) => tail_start(&f, len, n)?,
        None => 0,
    };
    let mut fmt = Formatter::new(opts);
    let mut out = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut at = start;
    let mut block = vec![0u8; BLOCK];
    while at < len && !fmt.done() {
        let n = f.read_at(&mut block, at)?;
        if n == 0 {
            break;
        }
        at += n as u64;
        pending.extend_from_slice(&block[..n]);
        let used = fmt.push_lines(&pending, &mut out);
        pending.drain(..used);
    }
    Ok(out)
}

/// How often a follower looks for new records.
const POLL: Duration = Duration::from_millis(200);
/// How often a follower asks the runtime whether the container still runs.
const STATE_EVERY: Duration = Duration::from_secs(1);

/// Whether the container still runs (it may write more).
pub type StillRunning = Box<dyn FnMut() -> BoxFuture<bool> + Send>;

/// Opens a log file for [`stream`], positioned for the last `tail` lines.
pub async fn open(path: &Path, tail: Option<u64>) -> io::Result<Reader> {
    let p = path.to_path_buf();
    let (file, start) = tokio::task::spawn_blocking(move || -> io::Result<_> {
        let f = std::fs::File::open(&p)?;
        let len = f.metadata()?.len();
        let start = match tail {
            Some(n) => tail_start(&f, len, n)?,
            None => 0,
        };
        Ok((f, start))
    })
    .await
    .map_err(io::Error::other)??;
    Ok(Reader {
        file: std::sync::Arc::new(file),
        at: start,
        pending: Vec::new(),
    })
}

/// Streams the log into `tx` from where `reader` stands: to its end, then, when
/// following, every new record until the container has exited and the file has
/// nothing more, the byte limit is reached, or the receiver is gone. A file the
/// runtime rotates or reopens (replaced or truncated) is read again from its start.
pub async fn stream(
    mut reader: Reader,
    path: PathBuf,
    opts: LogOptions,
    mut still_running: StillRunning,
    tx: mpsc::Sender<Bytes>,
) -> io::Result<()> {
    let mut fmt = Formatter::new(&opts);
    let mut last_check: Option<tokio::time::Instant> = None;
    let mut exited = false;
    loop {
        let chunk = reader.read().await?;
        if let Some(data) = chunk {
            reader.pending.extend_from_slice(&data);
            let mut out = Vec::new();
            let used = fmt.push_lines(&reader.pending, &mut out);
            reader.pending.drain(..used);
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                return Ok(());
            }
            if fmt.done() {
                return Ok(());
            }
            continue;
        }
        // At the end of the file.
        if !opts.follow || tx.is_closed() {
            return Ok(());
        }
        if exited {
            // The container had exited before this last read: nothing more will come.
            return Ok(());
        }
        if reader.replaced(&path).await {
            match tokio::fs::File::open(&path).await {
                Ok(f) => {
                    reader.file = std::sync::Arc::new(f.into_std().await);
                    reader.at = 0;
                    reader.pending.clear();
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if last_check.is_none_or(|t| t.elapsed() >= STATE_EVERY) {
            last_check = Some(tokio::time::Instant::now());
            if !still_running().await {
                // Read once more: it may have written its last lines since.
                exited = true;
                continue;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// A log file being read forward.
pub struct Reader {
    file: std::sync::Arc<std::fs::File>,
    at: u64,
    /// Bytes of a record not yet complete.
    pending: Vec<u8>,
}

impl Reader {
    /// The next bytes, or None at the end of the file.
    async fn read(&mut self) -> io::Result<Option<Vec<u8>>> {
        let file = self.file.clone();
        let at = self.at;
        let data = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
            let mut block = vec![0u8; BLOCK];
            let n = file.read_at(&mut block, at)?;
            block.truncate(n);
            Ok(block)
        })
        .await
        .map_err(io::Error::other)??;
        if data.is_empty() {
            return Ok(None);
        }
        self.at += data.len() as u64;
        Ok(Some(data))
    }

    /// Whether the path now names another file (rotated) or the file was truncated
    /// (reopened in place).
    async fn replaced(&self, path: &Path) -> bool {
        let Ok(now) = tokio::fs::metadata(path).await else {
            return false;
        };
        let Ok(open) = self.file.metadata() else {
            return false;
        };
        now.ino() != open.ino() || now.dev() != open.dev() || now.len() < self.at
    }
}

/// Keeps only the last `n` items of an iterator (for tests and small inputs).
#[cfg(test)]
fn last_n<T>(it: impl IntoIterator<Item = T>, n: usize) -> Vec<T> {
    let mut q = std::collections::VecDeque::with_capacity(n);
    for x in it {
        if q.len() == n {
            q.pop_front();
        }
        q.push_back(x);
    }
    q.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2024-05-01T10:00:00.000000001Z stdout F one
2024-05-01T10:00:01.000000000Z stderr F two
2024-05-01T10:00:02.000000000Z stdout P thr
2024-05-01T10:00:02.500000000Z stdout P e
2024-05-01T10:00:03.000000000Z stdout F e!
2024-05-01T10:00:04.000000000+00:00 stdout F:x four
2024-05-01T10:00:05.000000000Z stdout F 
";

    fn opts() -> LogOptions {
        LogOptions::default()
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    fn read(text: &str, o: &LogOptions) -> String {
        let (_d, p) = file(text);
        String::from_utf8(read_all(&p, o).unwrap()).unwrap()
    }

    #[test]
    fn records_parse_and_partial_lines_join() {
        let r = parse_record(b"2024-05-01T10:00:02.000000000Z stdout P a b ").unwrap();
        assert_eq!(
            (r.stream, r.partial, r.text),
            ("stdout", true, &b"a b "[..])
        );
        assert!(parse_record(b"2024-05-01T10:00:02Z stdout F")
            .unwrap()
            .text
            .is_empty());
        for bad in [
            &b"garbage"[..],
            b"2024-05-01T10:00:02Z stdin F x",
            b"2024-05-01T10:00:02Z stdout X x",
            b"yesterday stdout F x",
        ] {
            assert!(
                parse_record(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(read(LOG, &opts()), "one\ntwo\nthree!\nfour\n\n");
    }

    #[test]
    fn timestamps_are_the_first_chunks() {
        let o = LogOptions {
            timestamps: true,
            ..opts()
        };
        let out = read(LOG, &o);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "2024-05-01T10:00:00.000000001Z one");
        assert_eq!(lines[2], "2024-05-01T10:00:02.000000000Z three!");
        assert_eq!(lines[3], "2024-05-01T10:00:04.000000000+00:00 four");
    }

    #[test]
    fn tail_counts_joined_lines() {
        for (n, want) in [
            (0, ""),
            (1, "\n"),
            (2, "four\n\n"),
            (3, "three!\nfour\n\n"),
            (4, "two\nthree!\nfour\n\n"),
            (5, "one\ntwo\nthree!\nfour\n\n"),
            (50, "one\ntwo\nthree!\nfour\n\n"),
        ] {
            let o = LogOptions {
                tail_lines: Some(n),
                ..opts()
            };
            assert_eq!(read(LOG, &o), want, "tail {n}");
        }
        // A record still being written (no newline yet) is not shown or counted.
        let o = LogOptions {
            tail_lines: Some(1),
            ..opts()
        };
        assert_eq!(
            read(&format!("{LOG}2024-05-01T10:00:06Z stdout F six"), &o),
            "\n"
        );
        assert_eq!(read("", &o), "");
    }

    #[test]
    fn tail_crosses_read_blocks() {
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("2024-05-01T10:00:00Z stdout P {i}-\n"));
            text.push_str(&format!("2024-05-01T10:00:00Z stdout F {i}\n"));
        }
        let all: Vec<String> = (0..20_000).map(|i| format!("{i}-{i}")).collect();
        for n in [1usize, 7, 4_000, 19_999, 20_000] {
            let o = LogOptions {
                tail_lines: Some(n as u64),
                ..opts()
            };
            let out = read(&text, &o);
            let want = last_n(all.iter().cloned(), n).join("\n") + "\n";
            assert_eq!(out, want, "tail {n}");
        }
    }

    #[test]
    fn since_leaves_out_older_lines_whole() {
        let since = DateTime::parse_from_rfc3339("2024-05-01T10:00:02.200000000Z")
            .unwrap()
            .with_timezone(&Utc);
        let o = LogOptions {
            since: Some(since),
            ..opts()
        };
        // "three!" began before `since`: all its chunks go.
        assert_eq!(read(LOG, &o), "four\n\n");
        let o = LogOptions {
            since: Some(since),
            tail_lines: Some(4),
            ..opts()
        };
        assert_eq!(read(LOG, &o), "four\n\n");
    }

    #[test]
    fn limit_bytes_cuts_the_output() {
        for (n, want) in [
            (1, "o"),
            (4, "one\n"),
            (6, "one\ntw"),
            (1000, "one\ntwo\nthree!\nfour\n\n"),
        ] {
            let o = LogOptions {
                limit_bytes: Some(n),
                ..opts()
            };
            assert_eq!(read(LOG, &o), want, "limit {n}");
        }
        let o = LogOptions {
            limit_bytes: Some(40),
            timestamps: true,
            ..opts()
        };
        assert_eq!(read(LOG, &o), "2024-05-01T10:00:00.000000001Z one\n2024-");
    }

    #[test]
    fn options_parse_as_kubelet_reads_them() {
        let q = |s: &str| -> Vec<(String, String)> { form_pairs(s) };
        let now = DateTime::parse_from_rfc3339("2024-05-01T10:00:10Z")
            .unwrap()
            .with_timezone(&Utc);
        let o = LogOptions::parse(
            &q("follow=true&tailLines=3&timestamps=1&sinceSeconds=10&limitBytes=5&previous=false"),
            now,
        )
        .unwrap();
        assert_eq!(
            o,
            LogOptions {
                follow: true,
                previous: false,
                timestamps: true,
                tail_lines: Some(3),
                since: Some(now - chrono::Duration::seconds(10)),
                limit_bytes: Some(5),
            }
        );
        let o = LogOptions::parse(&q("sinceTime=2024-05-01T09:00:00Z&follow="), now).unwrap();
        assert!(o.follow);
        assert_eq!(o.since.unwrap().to_rfc3339(), "2024-05-01T09:00:00+00:00");
        for bad in [
            "tailLines=-1",
            "limitBytes=0",
            "sinceSeconds=0",
            "tailLines=x",
            "sinceTime=yesterday",
            "sinceSeconds=5&sinceTime=2024-05-01T09:00:00Z",
        ] {
            assert!(LogOptions::parse(&q(bad), now).is_err(), "{bad}");
        }
    }

    fn form_pairs(s: &str) -> Vec<(String, String)> {
        s.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    #[tokio::test]
    async fn follow_reads_new_records_until_the_container_exits() {
        let (_d, p) = file("2024-05-01T10:00:00Z stdout F one\n2024-05-01T10:00:00Z stdout P tw");
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let r = running.clone();
        let still: StillRunning = Box::new(move || {
            let v = r.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move { v })
        });
        let (tx, mut rx) = mpsc::channel(16);
        let o = LogOptions {
            follow: true,
            ..opts()
        };
        let r = open(&p, None).await.unwrap();
        let task = tokio::spawn(stream(r, p.clone(), o, still, tx));
        assert_eq!(&rx.recv().await.unwrap()[..], b"one\n");
        // The rest of the partial record, then one more line.
        let append = |s: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
            f.write_all(s.as_bytes()).unwrap();
        };
        append("o\n");
        assert_eq!(&rx.recv().await.unwrap()[..], b"two");
        append("2024-05-01T10:00:01Z stdout F !\n");
        assert_eq!(&rx.recv().await.unwrap()[..], b"!\n");
        // Rotated: the path now names a new file, read from its start.
        std::fs::rename(&p, p.with_extension("log.1")).unwrap();
        std::fs::write(&p, "2024-05-01T10:00:02Z stderr F rotated\n").unwrap();
        assert_eq!(&rx.recv().await.unwrap()[..], b"rotated\n");
        // The container exits after its last line: the stream ends after that line.
        append("2024-05-01T10:00:03Z stdout F last\n");
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(&rx.recv().await.unwrap()[..], b"last\n");
        assert!(rx.recv().await.is_none());
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn follow_stops_when_the_client_goes() {
        let (_d, p) = file("2024-05-01T10:00:00Z stdout F one\n");
        let still: StillRunning = Box::new(|| Box::pin(async { true }));
        let (tx, mut rx) = mpsc::channel(16);
        let o = LogOptions {
            follow: true,
            ..opts()
        };
        let r = open(&p, None).await.unwrap();
        let task = tokio::spawn(stream(r, p, o, still, tx));
        assert_eq!(&rx.recv().await.unwrap()[..], b"one\n");
        drop(rx);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the follower ends")
            .unwrap()
            .unwrap();
    }
}
