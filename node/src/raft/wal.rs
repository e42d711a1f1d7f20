//! The Raft log's files: entries appended to segment files that a purge
//! deletes whole, and the vote and purge point in a small file replaced
//! atomically. Synchronous and single-owner: the log store puts it behind
//! a mutex and decides when to sync.
//!
//! A record is `len: u32 LE`, `crc32: u32 LE` of the payload, then the
//! payload (an encoded entry). A segment is named by the index of its first
//! entry and holds consecutive entries; it is closed at `SEGMENT_BYTES`. At
//! open, a torn or corrupt record at the end of the last segment (a crash
//! mid-append, never acknowledged) is cut off; anywhere else it is an error.
//!
//! Why not sled: the log is written once and dropped from the front, and
//! sled keeps the space its peak took (its file grew to several times the
//! entries between two snapshots and never shrank); here the disk holds the
//! entries not yet purged and a little of the segment being filled.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use baa_proto::codec;
use serde::{Deserialize, Serialize};

use super::{Entry, LogId, Vote};

/// A segment is closed once it holds this many bytes.
const SEGMENT_BYTES: u64 = 4 << 20;
/// Record header: length and checksum.
const HEADER: usize = 8;
/// The largest record accepted back (a snapshot-sized entry is far below).
const MAX_RECORD: u32 = 64 << 20;
/// The file holding [`Meta`].
const META: &str = "meta";

/// The vote and the purge point.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// The last vote saved.
    pub vote: Option<Vote>,
    /// Entries up to here are purged.
    pub last_purged: Option<LogId>,
}

/// One segment file: where each of its entries starts and how long it is.
struct Segment {
    first: u64,
    file: Arc<File>,
    path: PathBuf,
    records: Vec<(u64, u32)>,
    size: u64,
}

impl Segment {
    fn next_index(&self) -> u64 {
        self.first + self.records.len() as u64
    }
}

/// The segment files and the meta file of one log directory.
pub struct Wal {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    meta: Meta,
}

fn corrupt(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `len`, `crc` and `payload` as one record.
fn record(payload: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_RECORD)
        .ok_or_else(|| corrupt("a log entry is too large"))?;
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// The payload of the record at the start of `buf`, and the record's
/// length; `None` if it is cut short or its checksum fails.
fn parse_record(buf: &[u8]) -> Option<(&[u8], usize)> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?);
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    // No entry encodes to nothing: a zero header is space never written.
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let payload = buf.get(HEADER..HEADER + len as usize)?;
    (crc32fast::hash(payload) == crc).then_some((payload, HEADER + len as usize))
}

fn decode(payload: &[u8]) -> io::Result<Entry> {
    codec::decode_record(payload).map_err(corrupt)
}

impl Wal {
    /// Opens the log in `dir` (created if missing), cutting off a torn tail
    /// and deleting segments wholly behind the purge point.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let meta = match fs::read(dir.join(META)) {
            Ok(bytes) => {
                let (payload, _) = parse_record(&bytes)
                    .ok_or_else(|| corrupt("the log's meta file is corrupt"))?;
                codec::decode_record(payload).map_err(corrupt)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return Err(e),
        };
        let mut firsts = Vec::new();
        for item in fs::read_dir(dir)? {
            let name = item?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name.strip_suffix(".seg") {
                firsts.push(
                    first
                        .parse::<u64>()
                        .map_err(|_| corrupt(format!("unexpected file {name} in the log")))?,
                );
            } else if name.ends_with(".tmp") {
                fs::remove_file(dir.join(&*name))?;
            }
        }
        firsts.sort_unstable();
        let mut wal = Self {
            dir: dir.to_path_buf(),
            segments: VecDeque::new(),
            meta,
        };
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let seg = wal.load_segment(first, i + 1 == count)?;
            if let Some(prev) = wal.segments.back() {
                if prev.next_index() != seg.first {
                    return Err(corrupt(format!(
                        "the log has a gap before entry {}",
                        seg.first
                    )));
                }
            }
            if seg.records.is_empty() {
                fs::remove_file(&seg.path)?;
                continue;
            }
            wal.segments.push_back(seg);
        }
        wal.drop_purged_segments()?;
        Ok(wal)
    }

    /// Reads segment `first`, checking every record; a bad record (cut
    /// short, failing its checksum, or not an entry) ends the last segment
    /// there (cut off) and is an error in any other.
    fn load_segment(&self, first: u64, last: bool) -> io::Result<Segment> {
        let path = self.dir.join(segment_name(first));
        let bytes = fs::read(&path)?;
        let mut records = Vec::new();
        let mut at = 0usize;
        while at < bytes.len() {
            let Some((payload, n)) = parse_record(&bytes[at..]) else {
                break;
            };
            let Ok(entry) = decode(payload) else {
                break;
            };
            let expected = first + records.len() as u64;
            if entry.log_id.index != expected {
                return Err(corrupt(format!(
                    "segment {first} holds entry {} where {expected} belongs",
                    entry.log_id.index
                )));
            }
            records.push((at as u64, payload.len() as u32));
            at += n;
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        if at < bytes.len() {
            if !last {
                return Err(corrupt(format!(
                    "segment {first} of the log is corrupt at byte {at}"
                )));
            }
            tracing::warn!(
                segment = first,
                at,
                "cutting off a torn tail of the Raft log"
            );
            file.set_len(at as u64)?;
            file.sync_all()?;
        }
        Ok(Segment {
            first,
            file: Arc::new(file),
            path,
            records,
            size: at as u64,
        })
    }

    /// The vote and purge point.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Replaces the meta file (written aside, synced, renamed over).
    pub fn set_meta(&mut self, meta: Meta) -> io::Result<()> {
        let bytes = record(&codec::encode_record(&meta).map_err(corrupt)?)?;
        let tmp = self.dir.join("meta.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(META))?;
        sync_dir(&self.dir)?;
        self.meta = meta;
        Ok(())
    }

    /// The index of the first entry not purged.
    fn first_live(&self) -> u64 {
        self.meta.last_purged.map_or(0, |p| p.index + 1)
    }

    /// The last entry's id, if any is left.
    pub fn last_log_id(&self) -> io::Result<Option<LogId>> {
        match self.segments.back() {
            Some(seg) if seg.next_index() > self.first_live() => Ok(self
                .read(seg.next_index() - 1, seg.next_index())?
                .pop()
                .map(|e| e.log_id)),
            _ => Ok(None),
        }
    }

    /// The index the next entry takes, while any entry is live.
    pub fn next_index(&self) -> Option<u64> {
        let next = self.segments.back()?.next_index();
        (next > self.first_live()).then_some(next)
    }

    /// The index the next entry must take: after the last live entry, or
    /// right after the purge point when none is left; any, in a log that
    /// never held an entry.
    pub fn expected_index(&self) -> Option<u64> {
        self.next_index()
            .or_else(|| self.meta.last_purged.map(|p| p.index + 1))
    }

    /// The file entries are appended to now: what a sync must cover.
    pub fn active_file(&self) -> Option<Arc<File>> {
        self.segments.back().map(|s| s.file.clone())
    }

    /// Writes `entries` (consecutive, each following the last one or, in a
    /// log holding nothing live, starting anew); not synced.
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        for entry in entries {
            let index = entry.log_id.index;
            let next = self.segments.back().map(Segment::next_index);
            if next != Some(index) {
                if next.is_some_and(|n| n > self.first_live()) {
                    return Err(corrupt(format!(
                        "entry {index} does not follow the log's last ({})",
                        next.unwrap_or(0).saturating_sub(1)
                    )));
                }
                if self.meta.last_purged.is_some() && index != self.first_live() {
                    return Err(corrupt(format!(
                        "entry {index} does not follow the purge point ({:?})",
                        self.meta.last_purged.map(|p| p.index)
                    )));
                }
                // Nothing live (all purged, e.g. after a snapshot install):
                // the log restarts right after the purge point.
                self.remove_segments(self.segments.len())?;
                self.start_segment(index)?;
            } else if self
                .segments
                .back()
                .is_some_and(|s| s.size >= SEGMENT_BYTES)
            {
                // The closed segment is synced now, so a sync of the active
                // file covers every entry written before it.
                if let Some(s) = self.segments.back() {
                    s.file.sync_data()?;
                }
                self.start_segment(index)?;
            }
            let payload = codec::encode_record(entry).map_err(corrupt)?;
            let bytes = record(&payload)?;
            let Some(seg) = self.segments.back_mut() else {
                return Err(corrupt("no segment to append to"));
            };
            seg.file.write_all_at(&bytes, seg.size)?;
            seg.records.push((seg.size, payload.len() as u32));
            seg.size += bytes.len() as u64;
        }
        Ok(())
    }

    fn start_segment(&mut self, first: u64) -> io::Result<()> {
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        sync_dir(&self.dir)?;
        self.segments.push_back(Segment {
            first,
            file: Arc::new(file),
            path,
            records: Vec::new(),
            size: 0,
        });
        Ok(())
    }

    /// Removes the `n` oldest segments, oldest first (a crash leaves a
    /// suffix: never a gap).
    fn remove_segments(&mut self, n: usize) -> io::Result<()> {
        for _ in 0..n {
            if let Some(seg) = self.segments.pop_front() {
                fs::remove_file(&seg.path)?;
            }
        }
        sync_dir(&self.dir)
    }

    fn drop_purged_segments(&mut self) -> io::Result<()> {
        let live = self.first_live();
        let dead = self
            .segments
            .iter()
            .take_while(|s| s.next_index() <= live)
            .count();
        if dead > 0 {
            self.remove_segments(dead)?;
        }
        Ok(())
    }

    /// The live entries with index in `start..end`.
    pub fn read(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        let start = start.max(self.first_live());
        let mut out = Vec::new();
        for seg in &self.segments {
            let (from, to) = (start.max(seg.first), end.min(seg.next_index()));
            if from >= to {
                continue;
            }
            let (i, j) = ((from - seg.first) as usize, (to - seg.first) as usize);
            let begin = seg.records[i].0;
            let (last_at, last_len) = seg.records[j - 1];
            let mut buf = vec![0u8; (last_at + HEADER as u64 + last_len as u64 - begin) as usize];
            seg.file.read_exact_at(&mut buf, begin)?;
            for &(at, len) in &seg.records[i..j] {
                let from = (at - begin) as usize + HEADER;
                out.push(decode(&buf[from..from + len as usize])?);
            }
        }
        Ok(out)
    }

    /// Removes the entries from `index` on, synced.
    pub fn truncate(&mut self, index: u64) -> io::Result<()> {
        while self.segments.back().is_some_and(|s| s.first >= index) {
            if let Some(seg) = self.segments.pop_back() {
                fs::remove_file(&seg.path)?;
            }
        }
        if let Some(seg) = self.segments.back_mut() {
            if seg.next_index() > index {
                let keep = (index - seg.first) as usize;
                seg.size = seg.records[keep].0;
                seg.records.truncate(keep);
                seg.file.set_len(seg.size)?;
                seg.file.sync_all()?;
            }
        }
        sync_dir(&self.dir)
    }

    /// Records `upto` as purged, then deletes the segments wholly behind it.
    pub fn purge(&mut self, upto: LogId) -> io::Result<()> {
        let meta = Meta {
            last_purged: Some(upto),
            ..self.meta.clone()
        };
        self.set_meta(meta)?;
        self.drop_purged_segments()
    }
}
