//! `baa backup FILE` (online, through the admin API) and `baa restore FILE`
//! (offline, one node's data directory at a time, like `etcdctl snapshot
//! restore`). The file format and its checks are in `crate::backup`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use baa_proto::model::BaaNode;
use clap::Args;

use super::client::{AdminClient, Connection};
use crate::backup::{self, Header};
use crate::config::{Config, Overrides};
use crate::raft::{SnapshotMeta, StoredMembership, Vote};

/// How long a backup may take to stream, at most.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);

/// Arguments of `baa backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The backup file to write (written as FILE.partial, renamed when whole
    /// and verified; an existing FILE is replaced only then).
    pub file: PathBuf,
}

/// Arguments of `baa restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file to restore.
    pub file: PathBuf,
    /// The configuration of the node to seed (its `node_id`, `data_dir`
    /// and `[[peers]]` make the new cluster's membership).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Override `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Prints progress to standard error, a few lines a second at most.
struct Ticker {
    last: Option<Instant>,
}

impl Ticker {
    fn new() -> Self {
        Self { last: None }
    }

    fn tick(&mut self, line: impl FnOnce() -> String) {
        if self
            .last
            .is_some_and(|l| l.elapsed() < Duration::from_millis(500))
        {
            return;
        }
        self.last = Some(Instant::now());
        eprintln!("{}", line());
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `baa backup FILE`: asks the node at --url for a fresh snapshot, streams
/// it to FILE.partial with progress, verifies it whole, syncs it and
/// renames it to FILE; prints its index and digest.
pub async fn backup(conn: &Connection, args: BackupArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(conn)?;
    let started = Instant::now();
    let partial = partial_path(&args.file);
    let result = fetch(&client, &partial).await;
    let header = match result {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, &args.file)
        .with_context(|| format!("renaming {} into place", partial.display()))?;
    sync_parent(&args.file)?;
    let size = std::fs::metadata(&args.file)?.len();
    println!(
        "backup {} written: agency {}, index {}, {} records, {} bytes, digest {}, {:.1} s",
        args.file.display(),
        header.agency,
        header.index(),
        header.records,
        size,
        header.digest,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// FILE.partial.
fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Streams the backup into `partial`, then verifies and syncs it.
async fn fetch(client: &AdminClient, partial: &Path) -> anyhow::Result<Header> {
    eprintln!("backup: asking the node for a fresh snapshot");
    let mut resp = client
        .get_streamed("/admin/v1/cluster/backup", BACKUP_TIMEOUT)
        .await?;
    // A backup holds every user's password hash and the sealed keys:
    // readable by its owner only, whatever the umask, even if the file
    // was there before.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", partial.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut ticker = Ticker::new();
    let mut received = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .context("receiving the backup (the node may have stopped)")?
    {
        out.write_all(&chunk)
            .with_context(|| format!("writing {}", partial.display()))?;
        received += chunk.len() as u64;
        ticker.tick(|| format!("backup: {} received", mib(received)));
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    eprintln!("backup: {} received; verifying", mib(received));
    let path = partial.to_path_buf();
    let header = tokio::task::spawn_blocking(move || {
        let mut ticker = Ticker::new();
        backup::verify(&path, |p| {
            ticker.tick(|| format!("verify: {} records, {}", p.records, mib(p.bytes)))
        })
    })
    .await??;
    file.sync_all()?;
    Ok(header)
}

fn sync_parent(path: &Path) -> anyhow::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()?;
    Ok(())
}

/// `baa restore FILE --config node.toml`: verifies the whole backup, then
/// seeds the node's (absent or empty) data directory from it, the
/// membership replaced by the configuration's node and peers. Nothing is
/// written before the file is known whole; a failure while seeding removes
/// what was written.
pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let overrides = Overrides {
        data_dir: args.data_dir.clone(),
        ..Overrides::default()
    };
    let config = Config::load(&args.config, overrides)?;
    let data_dir = config.data_dir.clone();
    refuse_non_empty(&data_dir)?;
    // The KEK the node will start with: the restored secrets must open
    // under it, or the node would refuse to start.
    let kek = crate::kek::KekRing::load(&config.secrets, |k| std::env::var(k).ok())?;
    eprintln!("restore: verifying {}", args.file.display());
    let mut ticker = Ticker::new();
    let header = backup::verify(&args.file, |p| {
        ticker.tick(|| {
            format!(
                "verify: {} records, {} of {}",
                p.records,
                mib(p.bytes),
                mib(p.total)
            )
        })
    })?;
    let last = header.meta.last_log_id.with_context(|| {
        format!(
            "backup {} holds no applied state (taken before its cluster was initialised)",
            args.file.display()
        )
    })?;
    if header.agency != config.sso.agency {
        eprintln!(
            "restore: note: the backup is of agency {:?}, this node's configuration names {:?}",
            header.agency, config.sso.agency
        );
    }
    let meta = new_cluster_meta(&header.meta, &config);
    let staging = staging_path(&data_dir);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {} (a restore cut short)", staging.display()))?;
    }
    let seeded = seed(&config, &kek, &args.file, &meta, last, &staging);
    if let Err(e) = seeded {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e.context(format!("restoring into {}", data_dir.display())));
    }
    // An empty data directory is replaced whole by the seeded one.
    if data_dir.exists() {
        std::fs::remove_dir(&data_dir)
            .with_context(|| format!("replacing the empty {}", data_dir.display()))?;
    }
    std::fs::rename(&staging, &data_dir)
        .with_context(|| format!("moving the restored state to {}", data_dir.display()))?;
    sync_parent(&data_dir)?;
    let voters: Vec<String> = meta
        .last_membership
        .membership()
        .voter_ids()
        .map(|id| id.to_string())
        .collect();
    println!(
        "restored node {} into {}: agency {}, index {}, {} records, digest {}, voters {}, {:.1} s; \
         start every restored node with `baa serve` (no `baa cluster init`)",
        config.node_id,
        data_dir.display(),
        header.agency,
        header.index(),
        header.records,
        header.digest,
        voters.join(","),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Refuses a data directory that exists and holds anything.
fn refuse_non_empty(data_dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => anyhow::ensure!(
            entries.next().is_none(),
            "data directory {} is not empty: restore seeds a new node only",
            data_dir.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", data_dir.display())),
    }
    Ok(())
}

/// `<data_dir>.restoring`, beside it.
fn staging_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_owned();
    name.push(".restoring");
    PathBuf::from(name)
}

/// The backup's snapshot meta with the membership of the new cluster: this
/// node and its configured peers, all voters, at the addresses the
/// configuration gives. The membership keeps the log id it had, so the
/// state's history reads the same.
pub fn new_cluster_meta(old: &SnapshotMeta, config: &Config) -> SnapshotMeta {
    let mut nodes = BTreeMap::new();
    nodes.insert(config.node_id, config.advertise.clone());
    for p in &config.peers {
        nodes.insert(
            p.id,
            BaaNode {
                public_addr: p.public_addr.clone(),
                cluster_addr: p.cluster_addr.clone(),
            },
        );
    }
    let voters: BTreeSet<u64> = nodes.keys().copied().collect();
    SnapshotMeta {
        last_log_id: old.last_log_id,
        last_membership: StoredMembership::new(
            *old.last_membership.log_id(),
            openraft::Membership::new(vec![voters], nodes),
        ),
        snapshot_id: format!("{}-restored", old.snapshot_id),
    }
}

/// Builds the data directory in `dir`: its format, the state and the
/// snapshot from the backup's records (whose secrets must open under
/// `kek`), and an empty log purged up to the backup's last log id, with a
/// vote of that log id's term (uncommitted, for no one else) so that the
/// first election goes past every term the log holds.
fn seed(
    config: &Config,
    kek: &crate::kek::KekRing,
    file: &Path,
    meta: &SnapshotMeta,
    last: crate::raft::LogId,
    dir: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    crate::versions::write_data_dir_format(dir)?;
    let state = crate::raft::state_machine::StateDb::open(
        dir,
        config.limits.storage_cache_mib.saturating_mul(1024 * 1024),
    )?;
    let store = crate::raft::state_machine::StateMachineStore::open(
        state,
        &dir.join("snapshots"),
        crate::metrics::Metrics::new(),
    )?;
    let mut ticker = Ticker::new();
    store.seed(meta, backup::records(file)?, |n| {
        ticker.tick(|| format!("restore: {n} records written"))
    })?;
    crate::key_rotation::check_secrets(&store.reader(), kek).context(
        "this node's key-encryption key does not open the backup's secrets: give it the KEK \
         of the agency the backup was taken from",
    )?;
    drop(store);
    let mut wal = crate::raft::wal::Wal::open(&dir.join("raft-wal"))?;
    wal.set_meta(crate::raft::wal::Meta {
        vote: Some(Vote::new(last.leader_id.term, config.node_id)),
        last_purged: Some(last),
    })?;
    drop(wal);
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
