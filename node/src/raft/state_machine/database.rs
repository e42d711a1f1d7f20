//! Where the state's sled database lives, and its rebuild into a fresh one.
//!
//! sled reuses the space of records that are gone but never gives its file
//! back (it shrinks only from the end), so after a burst of short-lived
//! records (a login's spent marker) the file keeps the size their peak
//! took. Copying the live records into a new database is the one way to
//! return that space; a node does it after a snapshot when the files take
//! much more than the live records (see `compaction`). The database is `db/` in the data directory until its
//! first rebuild, then `db.N/`, as the file `db.current` names: the new
//! database is complete and flushed before `db.current` is replaced to
//! name it, so a crash at any point leaves one whole database named, and
//! the other is removed at the next start.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The file naming the current database, once there was a rebuild.
const CURRENT: &str = "db.current";

/// The state's sled database and where it lives.
pub struct StateDb {
    db: sled::Db,
    data_dir: PathBuf,
    generation: u64,
    cache_bytes: u64,
}

impl StateDb {
    /// Opens the current state database of the data directory `data_dir`
    /// with a page cache of `cache_bytes`, and removes what an interrupted
    /// rebuild left behind.
    pub fn open(data_dir: &Path, cache_bytes: u64) -> anyhow::Result<Self> {
        let generation = match std::fs::read_to_string(data_dir.join(CURRENT)) {
            Ok(s) => s
                .trim()
                .parse()
                .with_context(|| format!("{CURRENT} in {} is corrupt", data_dir.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        let path = path(data_dir, generation);
        anyhow::ensure!(
            generation == 0 || path.is_dir(),
            "{CURRENT} names the state database {}, which is missing",
            path.display()
        );
        remove_others(data_dir, generation)?;
        Ok(Self {
            db: open_sled(&path, cache_bytes)?,
            data_dir: data_dir.to_path_buf(),
            generation,
            cache_bytes,
        })
    }

    /// The database `db`, already open, as the first generation of
    /// `data_dir`.
    #[cfg(test)]
    pub(super) fn from_open(db: sled::Db, data_dir: &Path) -> Self {
        Self {
            db,
            data_dir: data_dir.to_path_buf(),
            generation: 0,
            cache_bytes: 16 << 20,
        }
    }

    /// The database.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The database's directory.
    pub fn path(&self) -> PathBuf {
        path(&self.data_dir, self.generation)
    }

    /// Copies every tree into a fresh database of the next generation
    /// while writes go on: what they change meanwhile is brought over by
    /// [`catch_up`](Self::catch_up), in the writer's turn.
    pub(super) fn copy_to_next(&self) -> anyhow::Result<StateDb> {
        let next = self.generation + 1;
        let path = path(&self.data_dir, next);
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        let fresh = StateDb {
            db: open_sled(&path, self.cache_bytes)?,
            data_dir: self.data_dir.clone(),
            generation: next,
            cache_bytes: self.cache_bytes,
        };
        for name in self.db.tree_names() {
            let from = self.db.open_tree(&name)?;
            let to = fresh.db.open_tree(&name)?;
            load(&to, from.iter().map(|r| r.map_err(anyhow::Error::from)))?;
        }
        // Flushed now, while writes go on, so that the writer's turn in
        // `catch_up` flushes only the few keys written since.
        fresh.db.flush()?;
        Ok(fresh)
    }

    /// Brings the copy `fresh` up to this database and flushes it: the
    /// keys of the tree `active` written since the copy began (`written`)
    /// take their values now, and every other tree (the root and the redo
    /// record: a few small records) is copied again and checked. The
    /// caller holds the writer's turn from here until it has made the copy
    /// current ([`make_current`](Self::make_current)) and replaced its
    /// handles.
    pub(super) fn catch_up<'k>(
        &self,
        fresh: &StateDb,
        active: &[u8],
        written: impl Iterator<Item = &'k Vec<u8>>,
    ) -> anyhow::Result<()> {
        let (from, to) = (self.db.open_tree(active)?, fresh.db.open_tree(active)?);
        let mut batch = sled::Batch::default();
        for k in written {
            match from.get(k)? {
                Some(v) => batch.insert(k.as_slice(), v),
                None => batch.remove(k.as_slice()),
            }
        }
        to.apply_batch(batch)?;
        for name in self.db.tree_names() {
            if name.as_ref() == active {
                continue;
            }
            let (from, to) = (self.db.open_tree(&name)?, fresh.db.open_tree(&name)?);
            to.clear()?;
            load(&to, from.iter().map(|r| r.map_err(anyhow::Error::from)))?;
            anyhow::ensure!(
                from.checksum()? == to.checksum()?,
                "the copy of tree {} differs from the original",
                String::from_utf8_lossy(&name)
            );
        }
        fresh.db.flush()?;
        Ok(())
    }

    /// Names this database in `db.current`. An error means the name did
    /// not change; `Ok(false)` that it changed but may not be durable yet
    /// (the directory's sync failed), so the database it replaced must stay.
    pub(super) fn make_current(&self) -> std::io::Result<bool> {
        let tmp = self.data_dir.join(format!("{CURRENT}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{}", self.generation)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.data_dir.join(CURRENT))?;
        match std::fs::File::open(&self.data_dir).and_then(|d| d.sync_all()) {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::error!(error = %e, "syncing the data directory after naming the rebuilt state database");
                Ok(false)
            }
        }
    }

    /// Drops the database and removes its directory: once a rebuild made
    /// another one current, nothing else may hold it.
    pub(super) fn remove(self) -> std::io::Result<()> {
        let path = self.path();
        drop(self.db);
        std::fs::remove_dir_all(path)
    }
}

/// Writes `records` into `tree` in sled batches of 1,024: a bulk load (a
/// snapshot install, a rebuild), where sled's batches cost little per record.
pub(super) fn load<K, V>(
    tree: &sled::Tree,
    records: impl IntoIterator<Item = anyhow::Result<(K, V)>>,
) -> anyhow::Result<()>
where
    K: Into<sled::IVec>,
    V: Into<sled::IVec>,
{
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    for record in records {
        let (k, v) = record?;
        batch.insert(k, v);
        pending += 1;
        if pending == 1024 {
            tree.apply_batch(std::mem::take(&mut batch))?;
            pending = 0;
        }
    }
    tree.apply_batch(batch)?;
    Ok(())
}

fn path(data_dir: &Path, generation: u64) -> PathBuf {
    match generation {
        0 => data_dir.join("db"),
        n => data_dir.join(format!("db.{n}")),
    }
}

fn open_sled(path: &Path, cache_bytes: u64) -> anyhow::Result<sled::Db> {
    // The state needs no fsync of its own on the write path: what was
    // applied is replayed from the log after a crash, and a snapshot build
    // or install flushes the state before the log behind it can go.
    // sled's periodic flush would put an fsync of the state's pages beside
    // the log's, every half second, in the middle of the writes it delays.
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        .flush_every_ms(None)
        .open()
        .with_context(|| format!("opening the state database {}", path.display()))
}

/// Removes every state database of the data directory but `keep`'s, and a
/// half-written `db.current`.
fn remove_others(data_dir: &Path, keep: u64) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let generation = match name {
            "db" => Some(0),
            _ => name
                .strip_prefix("db.")
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u64>().ok()),
        };
        if generation.is_some_and(|g| g != keep) && entry.file_type()?.is_dir() {
            tracing::info!(path = %entry.path().display(), "removing a replaced state database");
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    match std::fs::remove_file(data_dir.join(format!("{CURRENT}.tmp"))) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}
