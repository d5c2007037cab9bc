//! Container logs as kubelet keeps them: one file per container run,
//! `{ns}_{pod}_{uid}/{container}/{restartCount}.log`, in the CRI format
//! (`{RFC3339Nano} {stdout|stderr} {F|P} {text}`), rotated at a size cap.
//! [`read`] and [`follow`] serve `kubectl logs` (tail, since, timestamps,
//! previous, follow).

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use weft_wasm_host::{LogSink, Stream};

/// kubelet's `containerLogMaxSize` default. One rotated file is kept, so a
/// container run uses at most twice this on disk.
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;

/// Log files still being written: a follower stops at the end of one that is not.
#[derive(Default)]
pub struct Live(Mutex<HashSet<PathBuf>>);

impl Live {
    pub fn contains(&self, path: &Path) -> bool {
        self.0.lock().expect("live logs").contains(path)
    }
}

/// One container run's log file; dropping it marks the run ended. The file
/// is opened on the first write, so thousands of quiet pods hold no descriptors.
pub struct ContainerLog {
    path: PathBuf,
    max_size: u64,
    file: Mutex<Option<(std::fs::File, u64)>>,
    live: Arc<Live>,
}

impl ContainerLog {
    pub fn create(path: PathBuf, max_size: u64, live: Arc<Live>) -> std::io::Result<Arc<Self>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // The file exists from the start: `kubectl logs` of a quiet container is empty, not an error.
        Self::open(&path)?;
        live.0.lock().expect("live logs").insert(path.clone());
        Ok(Arc::new(ContainerLog {
            path,
            max_size,
            file: Mutex::new(None),
            live,
        }))
    }

    fn open(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok((file, size))
    }

    /// The rotated predecessor of a log file.
    pub fn rotated(path: &Path) -> PathBuf {
        path.with_extension("log.1")
    }
}

impl Drop for ContainerLog {
    fn drop(&mut self) {
        self.live.0.lock().expect("live logs").remove(&self.path);
    }
}

/// `bytes` as CRI lines: full lines tagged F, a trailing partial one P.
fn format_cri(ts: &str, stream: Stream, bytes: &[u8], out: &mut Vec<u8>) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let (line, tag, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], "F", &rest[i + 1..]),
            None => (rest, "P", &rest[rest.len()..]),
        };
        out.extend_from_slice(ts.as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(tag.as_bytes());
        out.push(b' ');
        out.extend_from_slice(line);
        out.push(b'\n');
        rest = next;
    }
}

impl LogSink for ContainerLog {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut buf = Vec::with_capacity(bytes.len() + 48);
        format_cri(&Timestamp::now().to_string(), stream, bytes, &mut buf);
        let mut guard = self.file.lock().expect("log file");
        if guard.is_none() {
            match Self::open(&self.path) {
                Ok(f) => *guard = Some(f),
                Err(e) => return tracing::warn!("opening {}: {e}", self.path.display()),
            }
        }
        let Some((file, size)) = guard.as_mut() else {
            return;
        };
        if *size + buf.len() as u64 > self.max_size && *size > 0 {
            // Rotate: the current file becomes `.log.1` (replacing the older one).
            let _ = std::fs::rename(&self.path, Self::rotated(&self.path));
            match Self::open(&self.path) {
                Ok((f, _)) => {
                    *file = f;
                    *size = 0;
                }
                Err(e) => tracing::warn!("rotating {}: {e}", self.path.display()),
            }
        }
        // Output is best effort, as for a container whose log pipe is full.
        if file.write_all(&buf).is_ok() {
            *size += buf.len() as u64;
        }
    }
}

/// What `kubectl logs` asks for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub tail_lines: Option<usize>,
    pub since: Option<Timestamp>,
    pub timestamps: bool,
    pub limit_bytes: Option<usize>,
}

/// One parsed log line: its time and its text (P parts joined).
struct Line {
    ts: String,
    time: Option<Timestamp>,
    text: Vec<u8>,
}

/// Complete lines of CRI text; the partial tail (no newline yet) is left
/// unconsumed. Returns the lines and how many bytes they used.
fn parse(data: &[u8]) -> (Vec<Line>, usize) {
    let mut lines = Vec::new();
    let mut pending: Option<Line> = None;
    let mut used = 0;
    let mut pos = 0;
    while let Some(nl) = data[pos..].iter().position(|&b| b == b'\n') {
        let raw = &data[pos..pos + nl];
        pos += nl + 1;
        let mut parts = raw.splitn(4, |&b| b == b' ');
        let (Some(ts), Some(_stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let text = parts.next().unwrap_or_default();
        let ts = String::from_utf8_lossy(ts).into_owned();
        let line = pending.get_or_insert_with(|| Line {
            time: ts.parse().ok(),
            ts,
            text: Vec::new(),
        });
        line.text.extend_from_slice(text);
        if tag == b"F" {
            lines.extend(pending.take());
            used = pos;
        }
    }
    (lines, used)
}

/// Drops lines older than `since` (lines without a readable time stay).
fn keep_since(lines: &mut Vec<Line>, since: Option<Timestamp>) {
    if let Some(since) = since {
        lines.retain(|l| l.time.is_none_or(|t| t >= since));
    }
}

fn render(lines: &[Line], opts: &Options, out: &mut Vec<u8>) {
    for l in lines {
        if opts.timestamps {
            out.extend_from_slice(l.ts.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&l.text);
        out.push(b'\n');
    }
}

/// The log so far (the current file only, as kubelet serves it), and the
/// offset a follower continues from.
pub fn read(path: &Path, opts: &Options) -> std::io::Result<(Vec<u8>, u64)> {
    let data = std::fs::read(path)?;
    let (mut lines, used) = parse(&data);
    keep_since(&mut lines, opts.since);
    if let Some(n) = opts.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out = Vec::new();
    render(&lines, opts, &mut out);
    if let Some(limit) = opts.limit_bytes {
        out.truncate(limit);
    }
    Ok((out, used as u64))
}

/// Sends what is appended to `path` after `offset` until the run ends (the
/// file is no longer live and fully read) or the receiver goes away.
pub async fn follow(
    path: PathBuf,
    mut offset: u64,
    opts: Options,
    live: Arc<Live>,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) {
    let mut sent = 0usize;
    loop {
        let ended = !live.contains(&path);
        let chunk = (|| -> std::io::Result<Vec<u8>> {
            let mut f = std::fs::File::open(&path)?;
            let len = f.metadata()?.len();
            if len < offset {
                // Rotated underneath us: the new file starts from zero.
                offset = 0;
            }
            f.seek(SeekFrom::Start(offset))?;
            let mut data = Vec::new();
            f.read_to_end(&mut data)?;
            Ok(data)
        })();
        let Ok(data) = chunk else { return };
        let (mut lines, used) = parse(&data);
        offset += used as u64;
        keep_since(&mut lines, opts.since);
        if !lines.is_empty() {
            let mut out = Vec::new();
            render(&lines, &opts, &mut out);
            if let Some(limit) = opts.limit_bytes {
                out.truncate(limit.saturating_sub(sent));
            }
            sent += out.len();
            if tx.send(out).await.is_err() || opts.limit_bytes.is_some_and(|l| sent >= l) {
                return;
            }
        }
        if ended && used == data.len() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tx.closed() => return,
        }
    }
}

/// The directory of a pod's logs.
pub fn pod_dir(root: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    root.join(format!("{namespace}_{name}_{uid}"))
}

/// The log file of a container's `restart`th run.
pub fn run_path(pod_dir: &Path, container: &str, restart: u32) -> PathBuf {
    pod_dir.join(container).join(format!("{restart}.log"))
}

/// Keeps only the last two runs' logs (the current and `--previous`).
pub fn prune(pod_dir: &Path, container: &str, current: u32) {
    let Ok(entries) = std::fs::read_dir(pod_dir.join(container)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let run: Option<u32> = name
            .to_str()
            .and_then(|n| n.split('.').next())
            .and_then(|n| n.parse().ok());
        if run.is_some_and(|r| r + 1 < current) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The runs of a container that have logs, newest last.
pub fn runs(pod_dir: &Path, container: &str) -> Vec<u32> {
    let mut runs: Vec<u32> = std::fs::read_dir(pod_dir.join(container))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    runs.sort_unstable();
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(dir: &Path, max: u64) -> (Arc<ContainerLog>, PathBuf, Arc<Live>) {
        let live = Arc::new(Live::default());
        let path = run_path(dir, "c", 0);
        (
            ContainerLog::create(path.clone(), max, live.clone()).unwrap(),
            path,
            live,
        )
    }

    #[test]
    fn cri_lines_partial_lines_and_reading_back() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path, live) = sink(dir.path(), DEFAULT_MAX_SIZE);
        log.write(Stream::Stdout, b"one\ntw");
        log.write(Stream::Stdout, b"o\nthree\n");
        log.write(Stream::Stderr, b"oops\n");
        let raw = std::fs::read_to_string(&path).unwrap();
        let tags: Vec<&str> = raw.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, ["F", "P", "F", "F", "F"], "{raw}");
        assert!(raw.lines().nth(4).unwrap().contains(" stderr F oops"));

        let (all, _) = read(&path, &Options::default()).unwrap();
        assert_eq!(String::from_utf8(all).unwrap(), "one\ntwo\nthree\noops\n");
        let tail = Options {
            tail_lines: Some(2),
            ..Options::default()
        };
        assert_eq!(read(&path, &tail).unwrap().0, b"three\noops\n");
        let stamped = Options {
            timestamps: true,
            tail_lines: Some(1),
            ..Options::default()
        };
        let line = String::from_utf8(read(&path, &stamped).unwrap().0).unwrap();
        let (ts, text) = line.split_once(' ').unwrap();
        assert!(ts.parse::<Timestamp>().is_ok(), "{ts}");
        assert_eq!(text, "oops\n");
        let future = Options {
            since: Some(Timestamp::now() + Duration::from_secs(60)),
            ..Options::default()
        };
        assert!(read(&path, &future).unwrap().0.is_empty());
        let limited = Options {
            limit_bytes: Some(5),
            ..Options::default()
        };
        assert_eq!(read(&path, &limited).unwrap().0, b"one\nt");
        assert!(live.contains(&path));
        drop(log);
        assert!(!live.contains(&path), "a dropped log is no longer live");
    }

    #[test]
    fn rotation_caps_the_disk_used() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path, _live) = sink(dir.path(), 64 << 10);
        let line = [b'x'; 1000];
        for _ in 0..1_000 {
            log.write(Stream::Stdout, &line);
            log.write(Stream::Stdout, b"\n");
        }
        let cur = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(ContainerLog::rotated(&path))
            .unwrap()
            .len();
        assert!(cur <= 64 << 10 && old <= 64 << 10, "{cur} {old}");
        let (text, _) = read(&path, &Options::default()).unwrap();
        assert!(text.ends_with(b"x\n"));
    }

    #[tokio::test]
    async fn follow_streams_appends_and_ends_with_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path, live) = sink(dir.path(), DEFAULT_MAX_SIZE);
        log.write(Stream::Stdout, b"before\n");
        let (_, offset) = read(&path, &Options::default()).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let task = tokio::spawn(follow(path, offset, Options::default(), live, tx));
        log.write(Stream::Stdout, b"after\n");
        assert_eq!(rx.recv().await.unwrap(), b"after\n");
        drop(log);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("follow ends when the run ends")
            .unwrap();
    }

    #[test]
    fn runs_and_pruning() {
        let dir = tempfile::tempdir().unwrap();
        for r in 0..4 {
            let p = run_path(dir.path(), "c", r);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        assert_eq!(runs(dir.path(), "c"), [0, 1, 2, 3]);
        prune(dir.path(), "c", 3);
        assert_eq!(runs(dir.path(), "c"), [2, 3]);
    }
}
