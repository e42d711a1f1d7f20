//! baa-node: a baa agency node. This file wires configuration → storage →
//! network → Raft → actors → HTTP listeners; the rest of the crate is one
//! module per concern.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::todo,
    clippy::await_holding_lock
)]
// openraft's StorageError is large, and the storage traits require it.
#![allow(clippy::result_large_err)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod actors;
pub mod agency;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod kek;
pub mod key_rotation;
pub mod keys;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod peers;
pub mod pki;
pub mod raft;
pub mod sealing;
pub mod secrets;
pub mod sso;
pub mod tls;
pub mod versions;

use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use anyhow::Context;

use crate::agency::Agency;
use crate::config::{Config, LogFormat};
use crate::metrics::Metrics;
use crate::raft::log_store::LogStore;
use crate::raft::network::{ClusterClient, NetworkFactory};
use crate::raft::state_machine::{StateDb, StateMachineStore};
use crate::tls::NodeIdentity;

/// Sets up logging to standard error. Secrets are never passed to the logger.
pub fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The openraft configuration derived from the node's tuning.
fn raft_config(config: &Config) -> anyhow::Result<openraft::Config> {
    let r = &config.raft;
    let rc = openraft::Config {
        cluster_name: "baa".into(),
        heartbeat_interval: r.heartbeat_interval_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_after_logs),
        max_in_snapshot_log_to_keep: r.logs_to_keep,
        snapshot_max_chunk_size: 1024 * 1024,
        ..Default::default()
    };
    Ok(rc.validate()?)
}

/// Refuses to run a data directory that belongs to another node id.
fn claim_data_dir(db: &sled::Db, node_id: u64) -> anyhow::Result<()> {
    let tree = db.open_tree("node")?;
    match tree.get(b"node_id")? {
        Some(v) => {
            let recorded =
                u64::from_be_bytes(v.as_ref().try_into().context("corrupt node id record")?);
            anyhow::ensure!(
                recorded == node_id,
                "the data directory belongs to node {recorded}, not node {node_id}"
            );
        }
        None => {
            tree.insert(b"node_id", &node_id.to_be_bytes())?;
            db.flush()?;
        }
    }
    Ok(())
}

/// Runs a node until SIGINT/SIGTERM. Must be called inside an actix System.
pub async fn run(config: Config) -> anyhow::Result<()> {
    tls::install_crypto_provider();
    clock::follow_test_offset();
    let config = Arc::new(config);
    let kek = Arc::new(kek::KekRing::load(&config.secrets, |k| {
        std::env::var(k).ok()
    })?);
    tracing::info!(kek = %kek.ids(), "key-encryption keys read");
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    versions::claim_data_dir_format(&config.data_dir)?;
    let state = StateDb::open(
        &config.data_dir,
        config.limits.storage_cache_mib.saturating_mul(1024 * 1024),
    )
    .with_context(|| format!("opening the state in {}", config.data_dir.display()))?;
    claim_data_dir(state.db(), config.node_id)?;
    let wal = raft::log_store::open_log(
        &config.data_dir.join("raft-wal"),
        &config.data_dir.join("raft-log"),
        state.db(),
    )
    .with_context(|| format!("opening the Raft log in {}", config.data_dir.display()))?;

    let metrics = Metrics::new();
    // The state machine owns the database from here on: a rebuild replaces
    // it, so no other handle may outlive this point.
    let state_machine =
        StateMachineStore::open(state, &config.data_dir.join("snapshots"), metrics.clone())?;
    let storage = state_machine.storage();
    let log_store = LogStore::open(
        wal,
        config.node_id,
        metrics.clone(),
        state_machine.snapshot_cover(),
    )?;
    let reader = state_machine.reader();
    // Before anything is served: a node whose KEK does not open the
    // agency's secrets stops here, naming the KEK they need.
    key_rotation::check_secrets(&reader, &kek)
        .context("this node cannot open the agency's secrets")?;
    let keys = keys::KeyRing::new(reader.clone(), kek.clone());
    let tickets = sealing::TicketSealer::new(reader.clone(), kek.clone());

    let identity = NodeIdentity {
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
        cluster_ca: config.tls.cluster_ca.clone(),
        cluster_cert: config.tls.cluster_cert.clone(),
        cluster_key: config.tls.cluster_key.clone(),
    };
    identity.check_names_node(config.node_id)?;
    let cluster = Arc::new(ClusterClient::new(
        identity.cluster_client()?,
        config.cluster_source_ip,
        metrics.clone(),
    )?);
    let network = NetworkFactory::new(cluster.clone());

    let raft = raft::Raft::new(
        config.node_id,
        Arc::new(raft_config(&config)?),
        network,
        log_store,
        state_machine,
    )
    .await
    .context("starting raft")?;
    crate::raft::gauges::follow(&metrics, &raft);
    crate::raft::compaction::start(
        &raft,
        Duration::from_secs(config.raft.snapshot_idle_s),
        storage.clone(),
        config
            .raft
            .state_rebuild_waste_mib
            .saturating_mul(1024 * 1024),
    );

    let agency = Arc::new(Agency {
        id: config.node_id,
        raft: raft.clone(),
        state: reader,
        cluster: cluster.clone(),
        metrics: metrics.clone(),
        config: config.clone(),
        peers: Arc::default(),
        proposer: raft::proposer::Proposer::start(
            config.node_id,
            raft.clone(),
            cluster.clone(),
            config.write_timeout(),
            config.forward_attempt_timeout(),
        ),
        reads: raft::read_index::ReadRounds::start(
            config.node_id,
            raft.clone(),
            cluster,
            config.write_timeout(),
            metrics,
        ),
        kek: kek.clone(),
        keys,
        tickets,
        limits: limits::Limits::default(),
    });
    let hasher = actors::hasher::Hashers::start(
        config.limits.hash_threads(),
        config.limits.pending_hashes(),
        agency.metrics.clone(),
    );
    let _reaper =
        actors::reaper::Reaper::new(agency.clone(), actors::reaper::REAPER_INTERVAL).start();
    actors::courier::Courier::new(agency.clone()).start();
    memory::start_trimming();
    let directory = actors::federation_directory::FederationDirectory::new(agency.clone()).start();

    let listeners = http::start(agency.clone(), hasher, directory, &identity)?;
    tracing::info!(
        node_id = config.node_id,
        public = %config.public_listen,
        manage = %config.manage_listen,
        cluster = %config.cluster_listen,
        "baa node started"
    );
    let handles = [
        listeners.public.handle(),
        listeners.manage.handle(),
        listeners.cluster.handle(),
    ];
    let served = futures::future::join3(listeners.public, listeners.manage, listeners.cluster);
    futures::pin_mut!(served);
    // A secret this node cannot open (a node given another KEK than the
    // cluster's, joined or restarted) stops the node rather than let it
    // serve without keys.
    let (a, b, c) = tokio::select! {
        done = &mut served => done,
        e = key_rotation::watch_secrets(agency.clone()) => {
            tracing::error!(error = %e, "stopping: this node cannot open the agency's secrets");
            let stops = futures::future::join_all(handles.iter().map(|h| h.stop(false)));
            // The listeners' own results matter no more than the reason to stop.
            let _ = futures::future::join(&mut served, stops).await;
            if let Err(e) = raft.shutdown().await {
                tracing::warn!(error = %e, "raft shutdown");
            }
            storage.flush().await?;
            return Err(e.context("this node cannot open the agency's secrets"));
        }
    };
    tracing::info!("listeners stopped; shutting down raft");
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    storage.flush().await?;
    a?;
    b?;
    c?;
    Ok(())
}
