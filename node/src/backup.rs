//! The backup file: a snapshot of the state that a new cluster can be
//! seeded from (`baa backup`, `baa restore`). Transport-free: the admin
//! endpoint writes one to its response, the CLI verifies and reads one.
//!
//! Layout, every integer little-endian:
//!
//! ```text
//! magic      8 bytes  "BAABKUP\n"
//! format     u32      FORMAT when written; a newer one is refused
//! header_len u32      at most codec::MAX_RECORD_BYTES
//! header     bincode Header (proto::codec): format, snapshot meta (last log
//!            id, membership), record count, data length, state digest,
//!            agency, creation time
//! data       data_bytes of the snapshot's frames: u32 length + bincode
//!            (key, value), in key order, exactly as a snapshot's data file holds them
//! trailer    SHA-256 of every byte before it
//! ```
//!
//! Reading checks all of it before anything is used: magic, format, the
//! length the header announces against the file's, every record decoded
//! under the size limit, their count and digest against the header, and
//! the checksum. Any failure names the file and what is wrong.
//!
//! What a backup holds is the replicated state as it is on disk: signing
//! and ticket keys only as the envelopes the key-encryption key (KEK)
//! sealed, so a backup is useless without the KEK and must be kept apart
//! from it.

use std::io::{BufReader, Read, Write};
use std::path::Path;

use anyhow::Context;
use baa_proto::codec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::raft::state_machine::{read_record, StateDigest};
use crate::raft::SnapshotMeta;

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"BAABKUP\n";

/// The backup format this build writes and the highest it reads.
pub const FORMAT: u32 = 1;

const TRAILER_BYTES: u64 = 32;
/// Magic, format and header length.
const PREAMBLE_BYTES: u64 = 16;

/// What a backup says about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// The backup format (as in the preamble).
    pub format: u32,
    /// The snapshot's meta: the last log id it holds and the membership then.
    pub meta: SnapshotMeta,
    /// How many records the data holds.
    pub records: u64,
    /// How many bytes the data takes.
    pub data_bytes: u64,
    /// The state digest of the records (see `StateDigest`): what every
    /// node of a cluster restored from it shows.
    pub digest: String,
    /// The agency the state belongs to.
    pub agency: String,
    /// When the backup was written, Unix milliseconds.
    pub created_at_ms: u64,
}

impl Header {
    /// The log index the backup holds the state at.
    pub fn index(&self) -> u64 {
        self.meta.last_log_id.map(|l| l.index).unwrap_or(0)
    }
}

/// Hashes what passes through to `inner`.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

/// Counts what is read through it.
struct Counting<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Counts and digests the records of a snapshot's data, read to its end,
/// and measures it.
fn survey(data: impl Read) -> anyhow::Result<(u64, String, u64)> {
    let mut data = BufReader::new(Counting {
        inner: data,
        bytes: 0,
    });
    let mut digest = StateDigest::default();
    let mut records = 0u64;
    while let Some((k, v)) = read_record(&mut data)? {
        digest.add(&k, &v);
        records += 1;
    }
    Ok((records, digest.finish(), data.get_ref().bytes))
}

/// Writes a backup of the snapshot `meta` whose data `open_data` opens
/// (twice: once to count, digest and measure the records for the header,
/// once to copy them) to `out`, and returns its header. The data is
/// streamed, never held whole; both opens must read the same data (a
/// snapshot's data file is never rewritten in place).
pub fn write<R: Read>(
    meta: SnapshotMeta,
    mut open_data: impl FnMut() -> std::io::Result<R>,
    agency: &str,
    created_at_ms: u64,
    out: impl Write,
) -> anyhow::Result<Header> {
    let (records, digest, data_bytes) = survey(open_data()?)?;
    let header = Header {
        format: FORMAT,
        meta,
        records,
        data_bytes,
        digest,
        agency: agency.to_string(),
        created_at_ms,
    };
    let encoded = codec::encode_record(&header)?;
    let mut out = Hashing {
        inner: out,
        sha: Sha256::new(),
    };
    out.write_all(MAGIC)?;
    out.write_all(&FORMAT.to_le_bytes())?;
    out.write_all(&(encoded.len() as u32).to_le_bytes())?;
    out.write_all(&encoded)?;
    let copied = std::io::copy(&mut open_data()?.take(data_bytes), &mut out)?;
    anyhow::ensure!(
        copied == data_bytes,
        "the snapshot's data shrank while it was copied ({copied} of {data_bytes} bytes)"
    );
    let Hashing { mut inner, sha } = out;
    inner.write_all(&sha.finalize())?;
    inner.flush()?;
    Ok(header)
}

/// How far a verification has come, for progress reports.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Records read so far.
    pub records: u64,
    /// Data bytes read so far.
    pub bytes: u64,
    /// Data bytes in all.
    pub total: u64,
}

/// Verifies the whole backup file `path` (see the module's doc) and returns
/// its header; `progress` is called every few thousand records. An error
/// names the file and what is wrong with it.
pub fn verify(path: &Path, progress: impl FnMut(Progress)) -> anyhow::Result<Header> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening the backup {}", path.display()))?;
    let len = file.metadata()?.len();
    verify_from(file, len, progress).with_context(|| format!("backup {}", path.display()))
}

/// [`verify`] over any reader holding `len` bytes.
pub fn verify_from(
    input: impl Read,
    len: u64,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<Header> {
    let mut input = Hashing {
        inner: BufReader::new(input),
        sha: Sha256::new(),
    };
    let header = read_header(&mut input, len)?;
    let mut data = (&mut input).take(header.data_bytes);
    let mut digest = StateDigest::default();
    let mut records = 0u64;
    loop {
        let record = read_record(&mut data).with_context(|| {
            format!(
                "is corrupt: record {} does not decode",
                records.saturating_add(1)
            )
        })?;
        let Some((k, v)) = record else { break };
        digest.add(&k, &v);
        records += 1;
        if records.is_multiple_of(4096) {
            progress(Progress {
                records,
                bytes: header.data_bytes - data.limit(),
                total: header.data_bytes,
            });
        }
    }
    anyhow::ensure!(
        data.limit() == 0,
        "is corrupt: its data ends in the middle of a record"
    );
    progress(Progress {
        records,
        bytes: header.data_bytes,
        total: header.data_bytes,
    });
    let sum = input.sha.clone().finalize();
    let mut trailer = [0u8; TRAILER_BYTES as usize];
    input
        .inner
        .read_exact(&mut trailer)
        .context("is truncated: its checksum is missing")?;
    anyhow::ensure!(
        sum.as_slice() == trailer,
        "is corrupt: its checksum does not match its contents"
    );
    anyhow::ensure!(
        records == header.records,
        "is corrupt: it holds {records} records where its header announces {}",
        header.records
    );
    anyhow::ensure!(
        digest.finish() == header.digest,
        "is corrupt: its records' digest differs from its header's"
    );
    Ok(header)
}

/// Reads and checks the preamble and header of a backup of `len` bytes.
fn read_header(input: &mut impl Read, len: u64) -> anyhow::Result<Header> {
    let mut magic = [0u8; 8];
    input
        .read_exact(&mut magic)
        .map_err(|_| anyhow::anyhow!("is not a baa backup: it is too short"))?;
    anyhow::ensure!(
        &magic == MAGIC,
        "is not a baa backup: it does not start as one"
    );
    let mut word = [0u8; 4];
    input
        .read_exact(&mut word)
        .context("is truncated: its format is missing")?;
    let format = u32::from_le_bytes(word);
    anyhow::ensure!(
        format <= FORMAT,
        "backup format {format} is newer than this baa reads (≤ {FORMAT}); restore it with a \
         newer baa"
    );
    anyhow::ensure!(format >= 1, "is corrupt: it names format 0");
    input
        .read_exact(&mut word)
        .context("is truncated: its header is missing")?;
    let header_len = u64::from(u32::from_le_bytes(word));
    anyhow::ensure!(
        header_len <= codec::MAX_RECORD_BYTES,
        "is corrupt: its header length ({header_len} bytes) exceeds the limit"
    );
    anyhow::ensure!(
        PREAMBLE_BYTES + header_len <= len,
        "is truncated: its header is cut short"
    );
    let mut raw = vec![0u8; header_len as usize];
    input
        .read_exact(&mut raw)
        .context("is truncated: its header is cut short")?;
    let header: Header = codec::decode_record(&raw)
        .map_err(|e| anyhow::anyhow!("is corrupt: its header does not decode ({e})"))?;
    anyhow::ensure!(
        header.format == format,
        "is corrupt: its header names format {} after format {format}",
        header.format
    );
    let expected = (PREAMBLE_BYTES + header_len)
        .checked_add(header.data_bytes)
        .and_then(|n| n.checked_add(TRAILER_BYTES))
        .context("is corrupt: its header announces an impossible length")?;
    if len < expected {
        anyhow::bail!(
            "is truncated (or its header corrupt): it holds {len} bytes where its header \
             announces {expected}"
        );
    }
    anyhow::ensure!(
        len == expected,
        "is corrupt: it holds {len} bytes where its header announces {expected}"
    );
    Ok(header)
}

/// The records of a verified backup file, in order.
pub fn records(
    path: &Path,
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<(Vec<u8>, Vec<u8>)>>> {
    let mut input = BufReader::new(
        std::fs::File::open(path)
            .with_context(|| format!("opening the backup {}", path.display()))?,
    );
    let len = input.get_ref().metadata()?.len();
    let header = read_header(&mut input, len)?;
    let mut data = input.take(header.data_bytes);
    Ok(std::iter::from_fn(move || {
        read_record(&mut data).transpose()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{LogId, StoredMembership};
    use baa_proto::model::BaaNode;
    use std::collections::{BTreeMap, BTreeSet};

    fn frame(k: &[u8], v: &[u8]) -> Vec<u8> {
        let body = codec::encode_record(&(k.to_vec(), v.to_vec())).unwrap();
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend(body);
        out
    }

    fn meta() -> SnapshotMeta {
        let log_id = LogId::new(openraft::CommittedLeaderId::new(3, 1), 60);
        let nodes: BTreeMap<u64, BaaNode> = [(
            1,
            BaaNode {
                public_addr: "127.0.0.1:1".into(),
                cluster_addr: "127.0.0.1:2".into(),
            },
        )]
        .into();
        SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::new(
                Some(log_id),
                openraft::Membership::new(vec![BTreeSet::from([1])], nodes),
            ),
            snapshot_id: "3-60-0".into(),
        }
    }

    /// A backup of a few records, and their digest.
    fn sample() -> (Vec<u8>, String) {
        let mut data = Vec::new();
        let mut digest = StateDigest::default();
        for i in 0..10_000u32 {
            let (k, v) = (format!("u/{i:05}"), format!("value {i}"));
            data.extend(frame(k.as_bytes(), v.as_bytes()));
            digest.add(k.as_bytes(), v.as_bytes());
        }
        let mut out = Vec::new();
        let header = write(meta(), || Ok(data.as_slice()), "acme", 7, &mut out).unwrap();
        assert_eq!((header.records, header.index()), (10_000, 60));
        (out, digest.finish())
    }

    fn check(bytes: &[u8]) -> anyhow::Result<Header> {
        verify_from(bytes, bytes.len() as u64, |_| {})
    }

    #[test]
    fn a_backup_reads_back_with_its_records_digest_and_meta() {
        let (bytes, digest) = sample();
        let mut seen = Vec::new();
        let header = verify_from(bytes.as_slice(), bytes.len() as u64, |p| seen.push(p)).unwrap();
        assert_eq!(header.digest, digest);
        assert_eq!(header.agency, "acme");
        assert_eq!(header.meta.last_log_id, meta().last_log_id);
        assert!(seen.len() > 1, "progress reported along the way");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        std::fs::write(&path, &bytes).unwrap();
        verify(&path, |_| {}).unwrap();
        let back: Vec<_> = records(&path).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(back.len(), 10_000);
        assert_eq!(back[7], (b"u/00007".to_vec(), b"value 7".to_vec()));
    }

    #[test]
    fn a_truncated_backup_is_refused_as_truncated_wherever_it_is_cut() {
        let (bytes, _) = sample();
        for cut in [
            3,
            10,
            20,
            100,
            bytes.len() / 2,
            bytes.len() - 33,
            bytes.len() - 1,
        ] {
            let e = format!("{:#}", check(&bytes[..cut]).unwrap_err());
            assert!(
                e.contains("truncated") || e.contains("too short"),
                "cut at {cut}: {e}"
            );
        }
    }

    #[test]
    fn a_byte_flipped_anywhere_is_refused_as_corrupt() {
        let (bytes, _) = sample();
        // Past the magic and format, every position: header, data, trailer.
        let step = bytes.len() / 40;
        for at in (12..bytes.len())
            .step_by(step)
            .chain([12, 16, 40, bytes.len() - 1])
        {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            let e = format!("{:#}", check(&bad).unwrap_err());
            assert!(e.contains("corrupt"), "byte {at}: {e}");
        }
    }

    #[test]
    fn a_newer_format_is_refused_saying_so_and_a_foreign_file_is_not_a_backup() {
        let (mut bytes, _) = sample();
        let newer = FORMAT + 1;
        bytes[8..12].copy_from_slice(&newer.to_le_bytes());
        let e = check(&bytes).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "backup format {newer} is newer than this baa reads (≤ {FORMAT}); restore it \
                 with a newer baa"
            )
        );
        let e = check(b"not a backup, only some text")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a baa backup"), "{e}");
    }

    #[test]
    fn an_oversized_record_length_is_refused_without_allocating_it() {
        let (bytes, _) = sample();
        let hl = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let mut bad = bytes.clone();
        let first = 16 + hl;
        bad[first..first + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = format!("{:#}", check(&bad).unwrap_err());
        assert!(
            e.contains("corrupt") && e.contains("exceeds the limit"),
            "{e}"
        );
    }

    /// A state of a few users under a one-node membership, snapshotted.
    async fn snapshotted(dir: &Path) -> crate::raft::state_machine::StateMachineStore {
        use baa_proto::command::{NewUser, Op};
        use openraft::storage::RaftStateMachine;
        let user = |name: &str| {
            Op::CreateUser(NewUser {
                username: name.into(),
                display_name: name.into(),
                email: None,
                groups: vec![],
                attributes: BTreeMap::new(),
                password_hash: None,
            })
        };
        let ops = (0..50)
            .map(|i| (1_000 + i, user(&format!("u{i}"))))
            .collect();
        let mut sm = crate::raft::state_machine::applied(dir, ops).await;
        let m = meta();
        sm.apply(vec![crate::raft::Entry {
            log_id: m.last_log_id.unwrap(),
            payload: openraft::EntryPayload::Membership(m.last_membership.membership().clone()),
        }])
        .await
        .unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
            .await
            .unwrap();
        sm
    }

    #[tokio::test]
    async fn a_backup_seeds_a_new_node_with_its_digest_at_its_index_under_the_new_membership() {
        use openraft::storage::RaftStateMachine;
        let a = tempfile::tempdir().unwrap();
        let sm = snapshotted(a.path()).await;
        let (source_index, source_digest) = sm
            .reader()
            .digest()
            .unwrap()
            .expect("a quiet state settles");
        let (snap_meta, file) = sm.reader().current_snapshot().unwrap().unwrap();
        let mut bytes = Vec::new();
        let open = || {
            let mut f = file.try_clone()?;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))?;
            Ok(f)
        };
        let header = write(snap_meta.clone(), open, "acme", 9, &mut bytes).unwrap();
        assert_eq!(
            (Some(header.index()), &header.digest),
            (source_index, &source_digest)
        );
        let path = a.path().join("backup");
        std::fs::write(&path, &bytes).unwrap();
        let header = verify(&path, |_| {}).unwrap();

        // The new cluster: nodes 4, 5 and 6 at other addresses.
        let nodes: BTreeMap<u64, BaaNode> = (4..=6)
            .map(|i| {
                let n = BaaNode {
                    public_addr: format!("10.0.0.{i}:443"),
                    cluster_addr: format!("10.0.0.{i}:9443"),
                };
                (i, n)
            })
            .collect();
        let membership = StoredMembership::new(
            *header.meta.last_membership.log_id(),
            openraft::Membership::new(vec![BTreeSet::from([4, 5, 6])], nodes),
        );
        let seeded_meta = SnapshotMeta {
            last_membership: membership.clone(),
            ..header.meta.clone()
        };
        let b = tempfile::tempdir().unwrap();
        let state = crate::raft::state_machine::StateDb::open(b.path(), 16 << 20).unwrap();
        let mut fresh = crate::raft::state_machine::StateMachineStore::open(
            state,
            &b.path().join("snap"),
            crate::metrics::Metrics::new(),
        )
        .unwrap();
        let mut seen = 0;
        fresh
            .seed(&seeded_meta, records(&path).unwrap(), |n| seen = n)
            .unwrap();
        assert_eq!(seen, header.records);
        assert_eq!(
            fresh
                .reader()
                .digest()
                .unwrap()
                .expect("a quiet state settles"),
            (source_index, source_digest)
        );
        let (applied, stored) = fresh.applied_state().await.unwrap();
        assert_eq!(applied, header.meta.last_log_id);
        assert_eq!(stored, membership);
        assert!(fresh.reader().user("u49").unwrap().is_some());
        let current = fresh.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, seeded_meta);
        // A second seed finds the state taken.
        let e = fresh
            .seed(&seeded_meta, records(&path).unwrap(), |_| {})
            .unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// A backup verifies; with any byte changed or cut anywhere it is
        /// refused; arbitrary bytes never panic the reader.
        #[test]
        fn a_backup_verifies_only_unaltered(
            records in proptest::collection::btree_map(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16),
                0..6,
            ),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            by in 1u8..,
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let quiet = |_: Progress| ();
            let data: Vec<u8> = records.iter().flat_map(|(k, v)| frame(k, v)).collect();
            let mut file = Vec::new();
            let header = write(meta(), || Ok(data.as_slice()), "acme", 7, &mut file).unwrap();
            proptest::prop_assert_eq!(header.records, records.len() as u64);
            let read = verify_from(file.as_slice(), file.len() as u64, quiet).unwrap();
            proptest::prop_assert_eq!(read.digest, header.digest);
            let i = at.index(file.len());
            let mut altered = file.clone();
            altered[i] = altered[i].wrapping_add(by);
            proptest::prop_assert!(verify_from(altered.as_slice(), file.len() as u64, quiet).is_err());
            let c = cut.index(file.len());
            proptest::prop_assert!(verify_from(&file[..c], c as u64, quiet).is_err());
            let mut forged = MAGIC.to_vec();
            forged.extend(junk);
            proptest::prop_assert!(verify_from(forged.as_slice(), forged.len() as u64, quiet).is_err());
        }
    }
}
