//! Prometheus metrics of a node, declared in one place. Raft gauges are
//! refreshed from openraft's metrics channel; HTTP metrics by a middleware.

use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the node exports.
pub struct Metrics {
    registry: Registry,
    families: Vec<String>,
    /// Current Raft term.
    pub raft_term: IntGauge,
    /// Current leader id (0 when unknown).
    pub raft_leader_id: IntGauge,
    /// 1 when this node is the leader.
    pub raft_is_leader: IntGauge,
    /// Index of the last log entry.
    pub raft_last_log_index: IntGauge,
    /// Index of the last committed entry.
    pub raft_committed_index: IntGauge,
    /// Index of the last applied entry.
    pub raft_applied_index: IntGauge,
    /// Entries each follower is behind the leader's last log index (leader only).
    pub raft_replication_lag: IntGaugeVec,
    /// How long ago the first entry each follower lacks was appended on
    /// the leader (0 when it has them all; leader only).
    pub raft_replication_lag_seconds: GaugeVec,
    /// 1 when this node knows a leader.
    pub raft_has_leader: IntGauge,
    /// Token translations (an app's token to its session) by result.
    pub translations: IntCounterVec,
    /// Device authorization grants by event.
    pub device_flows: IntCounterVec,
    /// Sessions held in the state (live ones and those not yet swept).
    pub sessions: IntGauge,
    /// Elections observed (term changes seen by this node).
    pub elections: IntCounter,
    /// Leader changes observed by this node.
    pub leader_changes: IntCounter,
    /// Snapshots built by this node.
    pub snapshots_built: IntCounter,
    /// Snapshots installed from a leader.
    pub snapshots_installed: IntCounter,
    /// Rebuilds of the state's database into a fresh one (see `raft::compaction`).
    pub state_rebuilds: IntCounter,
    /// Bytes available to the node on the data directory's file system.
    pub data_dir_available: IntGauge,
    /// Size of the data directory's file system.
    pub data_dir_size: IntGauge,
    /// Time from proposing a command to its applied result.
    pub proposal_duration: Histogram,
    /// Writes forwarded to the leader by this node.
    pub writes_forwarded: IntCounter,
    /// Read-index rounds this node ran for linearizable reads.
    pub read_index_rounds: IntCounter,
    /// Linearizable reads those rounds answered.
    pub read_index_readers: IntCounter,
    /// Log flushes (fsyncs) done by the group-commit flusher.
    pub log_flushes: IntCounter,
    /// Log appends acknowledged by those flushes.
    pub log_flushed_appends: IntCounter,
    /// Duration of one log flush.
    pub log_flush_duration: Histogram,
    /// Round trip of calls to peers' cluster ports, by path.
    pub cluster_rpc_duration: HistogramVec,
    /// Messages sent to an actor and not yet answered (waiting in its
    /// mailbox or being handled), by actor.
    pub actor_mailbox_depth: IntGaugeVec,
    /// Time from sending a message to an actor to its answer, by actor.
    pub actor_handling: HistogramVec,
    /// HTTP requests by route, method and status.
    pub http_requests: IntCounterVec,
    /// HTTP request latency by route.
    pub http_duration: HistogramVec,
    /// SSO cookie validations by result (valid, absent, malformed, signature, foreign, no_session).
    pub cookie_validations: IntCounterVec,
    /// Password sign-ins by result (ok, failed, locked).
    pub sign_ins: IntCounterVec,
    /// Login tickets issued.
    pub tickets_issued: IntCounter,
    /// Ticket redemptions by result (ok, invalid_grant, invalid_client).
    pub redemptions: IntCounterVec,
    /// Agency pages shown, by page (sign_in, trust, error, sign_out).
    pub pages: IntCounterVec,
    /// Back-channel logout deliveries by result (ok, failed).
    pub backchannel_logouts: IntCounterVec,
    /// Back-channel logouts waiting in the outbox (as the leader last saw).
    pub outbox_items: IntGauge,
    /// Secrets of the state not wrapped under this node's current
    /// key-encryption key (in the clear, or under a previous one).
    pub secrets_not_under_current_kek: IntGauge,
    /// Whether the last fetch of each peer agency's configuration worked (1) or not (0).
    pub federation_peer_reachable: IntGaugeVec,
    /// Age of the configuration of each peer agency this node holds, in seconds.
    pub federation_configuration_age: IntGaugeVec,
    /// Fetches of peer agencies' configurations by peer and result.
    pub federation_refreshes: IntCounterVec,
    /// Peer references checked by the cross-agency validator, by peer and result.
    pub federation_validations: IntCounterVec,
    /// The cross-agency validator's answers from its cache (`hit`) or the peer (`miss`).
    pub federation_cache: IntCounterVec,
    /// Silent round trips to peers, by peer and result.
    pub federation_round_trips: IntCounterVec,
}

/// Longest delay between a Raft state change and the gauges showing it.
pub const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 5.0,
    10.0,
];

/// The events `baa_sso_device_flows_total` counts.
pub const DEVICE_EVENTS: [&str; 4] = ["started", "approved", "denied", "wrong_code"];

impl Metrics {
    /// Creates and registers every metric. Panics only on duplicate
    /// registration, which is a programming error caught by the tests.
    #[allow(clippy::expect_used)]
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let mut families = Vec::new();
        // The process's resident memory, CPU time, threads and open files.
        let process = prometheus::process_collector::ProcessCollector::for_self();
        families.extend(process.desc().iter().map(|d| d.fq_name.clone()));
        registry
            .register(Box::new(process))
            .expect("metric registration");
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition");
                families.extend(m.desc().iter().map(|d| d.fq_name.clone()));
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric registration");
                m
            }};
        }
        // Which release this node runs, for dashboards across an upgrade.
        reg!(IntGaugeVec::new(
            Opts::new("baa_build_info", "The release this node runs (always 1)"),
            &["version"]
        ))
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        let m = Metrics {
            cookie_validations: reg!(IntCounterVec::new(
                Opts::new(
                    "baa_sso_cookie_validations_total",
                    "SSO cookie validations by result"
                ),
                &["result"]
            )),
            sign_ins: reg!(IntCounterVec::new(
                Opts::new("baa_sso_sign_ins_total", "Password sign-ins by result"),
                &["result"]
            )),
            tickets_issued: reg!(IntCounter::new(
                "baa_sso_tickets_issued_total",
                "Login tickets (authorization codes) issued"
            )),
            redemptions: reg!(IntCounterVec::new(
                Opts::new(
                    "baa_sso_ticket_redemptions_total",
                    "Ticket redemptions at the token endpoint by result"
                ),
                &["result"]
            )),
            pages: reg!(IntCounterVec::new(
                Opts::new(
                    "baa_sso_pages_total",
                    "Agency pages shown to browsers, by page"
                ),
                &["page"]
            )),
            outbox_items: reg!(IntGauge::new(
                "baa_sso_backchannel_outbox_items",
                "Back-channel logouts waiting in the outbox (as the leader last saw)"
            )),
            secrets_not_under_current_kek: reg!(IntGauge::new(
                "baa_secrets_not_under_current_kek",
                "Secrets of the state not wrapped under this node's current key-encryption key \
                 (in the clear or under a previous one); 0 once the leader has rewrapped them"
            )),
            backchannel_logouts: reg!(IntCounterVec::new(
                Opts::new(
                    "baa_sso_backchannel_logouts_total",
                    "Back-channel logout delivery attempts to partner sites by result (retried: failed, to be tried again)"
                ),
                &["result"]
            )),
            federation_peer_reachable: reg!(IntGaugeVec::new(
                Opts::new(
                    "baa_federation_peer_reachable",
                    "Whether the last fetch of the peer agency's configuration worked"
                ),
                &["peer"]
            )),
            federation_configuration_age: reg!(IntGaugeVec::new(
                Opts::new(
                    "baa_federation_configuration_age_seconds",
                    "Age of the peer agency's configuration this node holds"
                ),
                &["peer"]
            )),
            federation_refreshes: reg!(IntCounterVec::new(
                Opts::new(
                    "baa_federation_refreshes_total",
                    "Fetches of peer agencies' configurations by peer and result"
                ),
                &["peer", "result"]
            )),
            federation_validations: reg!(IntCounterVec::new(
                Opts::new(
                    "baa_federation_validations_total",
                    "Peer agencies' references checked, by peer and result"
                ),
                &["peer", "result"]
            )),
            federation_cache: reg!(IntCounterVec::new(
                Opts::new(
                    "baa_federation_cache_total",
                    "Cross-agency session answers from the cache (hit) or the peer (miss)"
                ),
                &["result"]
            )),
            federation_round_trips: reg!(IntCounterVec::new(
                Opts::new(
                    "baa_federation_round_trips_total",
                    "Silent round trips to peer agencies, by peer and result"
                ),
                &["peer", "result"]
            )),
            raft_term: reg!(IntGauge::new("baa_raft_term", "Current Raft term")),
            raft_leader_id: reg!(IntGauge::new(
                "baa_raft_leader_id",
                "Current leader id, 0 when unknown"
            )),
            raft_is_leader: reg!(IntGauge::new(
                "baa_raft_is_leader",
                "1 when this node is the leader"
            )),
            raft_last_log_index: reg!(IntGauge::new(
                "baa_raft_last_log_index",
                "Index of the last log entry"
            )),
            raft_committed_index: reg!(IntGauge::new(
                "baa_raft_committed_index",
                "Index of the last committed entry"
            )),
            raft_applied_index: reg!(IntGauge::new(
                "baa_raft_applied_index",
                "Index of the last applied entry"
            )),
            raft_replication_lag: reg!(IntGaugeVec::new(
                Opts::new(
                    "baa_raft_replication_lag",
                    "Entries a follower is behind the leader's last log index"
                ),
                &["follower"]
            )),
            elections: reg!(IntCounter::new(
                "baa_raft_elections_total",
                "Elections observed (term changes)"
            )),
            leader_changes: reg!(IntCounter::new(
                "baa_raft_leader_changes_total",
                "Leader changes observed"
            )),
            snapshots_built: reg!(IntCounter::new(
                "baa_raft_snapshots_built_total",
                "Snapshots built by this node"
            )),
            snapshots_installed: reg!(IntCounter::new(
                "baa_raft_snapshots_installed_total",
                "Snapshots installed from the leader"
            )),
            state_rebuilds: reg!(IntCounter::new(
                "baa_state_rebuilds_total",
                "Rebuilds of the state's database into a fresh one, giving back the space of records gone"
            )),
            data_dir_available: reg!(IntGauge::new(
                "baa_data_dir_filesystem_available_bytes",
                "Bytes available to the node on its data directory's file system, at the last scrape"
            )),
            data_dir_size: reg!(IntGauge::new(
                "baa_data_dir_filesystem_size_bytes",
                "Size of the data directory's file system"
            )),
            proposal_duration: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "baa_raft_proposal_duration_seconds",
                    "Time from proposal to applied result"
                )
                .buckets(LATENCY_BUCKETS.to_vec())
            )),
            read_index_rounds: reg!(IntCounter::new(
                "baa_read_index_rounds_total",
                "Read-index rounds run by this node for linearizable reads"
            )),
            read_index_readers: reg!(IntCounter::new(
                "baa_read_index_readers_total",
                "Linearizable reads answered by this node's read-index rounds"
            )),
            writes_forwarded: reg!(IntCounter::new(
                "baa_writes_forwarded_total",
                "Writes this node forwarded to the leader"
            )),
            log_flushes: reg!(IntCounter::new(
                "baa_raft_log_flushes_total",
                "Log flushes (fsyncs)"
            )),
            log_flushed_appends: reg!(IntCounter::new(
                "baa_raft_log_flushed_appends_total",
                "Log appends acknowledged by a flush (appends per flush = this / flushes)"
            )),
            log_flush_duration: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "baa_raft_log_flush_duration_seconds",
                    "Duration of one log flush (fsync)"
                )
                .buckets(LATENCY_BUCKETS.to_vec())
            )),
            cluster_rpc_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "baa_cluster_rpc_duration_seconds",
                    "Round trip of calls to peers' cluster ports"
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["path"]
            )),

            raft_replication_lag_seconds: reg!(GaugeVec::new(
                Opts::new(
                    "baa_raft_replication_lag_seconds",
                    "How long ago the first entry a follower lacks was appended on the leader (leader only)"
                ),
                &["follower"]
            )),
            raft_has_leader: reg!(IntGauge::new(
                "baa_raft_has_leader",
                "1 when this node knows a leader"
            )),
            translations: reg!(IntCounterVec::new(
                Opts::new(
                    "baa_sso_token_translations_total",
                    "Token translations (an app's token to its session) by result (found, refused, error)"
                ),
                &["result"]
            )),
            device_flows: reg!(IntCounterVec::new(
                Opts::new(
                    "baa_sso_device_flows_total",
                    "Device authorization grants by event (started, approved, denied, wrong_code)"
                ),
                &["event"]
            )),
            sessions: reg!(IntGauge::new(
                "baa_sso_sessions",
                "Sessions held in the state (live ones and those not yet swept)"
            )),
            actor_mailbox_depth: reg!(IntGaugeVec::new(
                Opts::new(
                    "baa_actor_mailbox_depth",
                    "Messages sent to an actor and not yet answered (queued or being handled)"
                ),
                &["actor"]
            )),
            actor_handling: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "baa_actor_handling_seconds",
                    "Time from sending a message to an actor to its answer (wait in the mailbox included)"
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["actor"]
            )),
            http_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "baa_http_requests_total",
                    "HTTP requests by route, method and status"
                ),
                &["listener", "route", "method", "status"]
            )),
            http_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "baa_http_request_duration_seconds",
                    "HTTP request latency by route"
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["listener", "route"]
            )),
            registry,
            families,
        };
        // Every label value of an enum-like counter exists from the start,
        // so that a dashboard shows 0 rather than no data.
        for result in ["found", "refused", "error"] {
            m.translations.with_label_values(&[result]);
        }
        for event in DEVICE_EVENTS {
            m.device_flows.with_label_values(&[event]);
        }
        Arc::new(m)
    }

    /// The name of every metric family registered, served or not yet.
    pub fn families(&self) -> &[String] {
        &self.families
    }

    /// Counts a device grant's event (one of [`DEVICE_EVENTS`]).
    pub fn device_flow(&self, event: &'static str) {
        self.device_flows.with_label_values(&[event]).inc();
    }

    /// Counts a password sign-in by its result.
    pub fn sign_in(&self, result: SignInResult) {
        self.sign_ins.with_label_values(&[result.label()]).inc();
    }

    /// Counts a page the agency showed.
    pub fn page(&self, page: Page) {
        self.pages.with_label_values(&[page.label()]).inc();
    }

    /// Counts a browser's cookie check by its outcome.
    pub fn cookie_check(&self, outcome: CookieCheck) {
        self.cookie_validations
            .with_label_values(&[outcome.label()])
            .inc();
    }

    /// Counts a check of peer `peer`'s reference by its result.
    pub fn peer_check(&self, peer: &str, result: PeerCheck) {
        self.federation_validations
            .with_label_values(&[peer, result.label()])
            .inc();
    }

    /// Counts a silent round trip to peer `peer` by its result.
    pub fn round_trip(&self, peer: &str, result: PeerCheck) {
        self.federation_round_trips
            .with_label_values(&[peer, result.label()])
            .inc();
    }

    /// Counts a back-channel logout delivery by its outcome.
    pub fn backchannel_logout(&self, outcome: Delivery) {
        self.backchannel_logouts
            .with_label_values(&[outcome.label()])
            .inc();
    }

    /// Reads the free space of the file system holding `dir` into the two
    /// data-directory gauges (left as they were if it cannot be read).
    pub fn observe_data_dir(&self, dir: &std::path::Path) {
        use std::os::unix::ffi::OsStrExt;
        let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: `path` is a valid NUL-terminated string and `stat` a
        // zeroed struct statvfs that the call fills in.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return;
        }
        let block = stat.f_frsize as i64;
        self.data_dir_available
            .set((stat.f_bavail as i64).saturating_mul(block));
        self.data_dir_size
            .set((stat.f_blocks as i64).saturating_mul(block));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Defines an enum of the values one label takes, so that a typo cannot
/// start a new series.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $value:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// The label value.
            pub fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $value,)*
                }
            }
        }
    };
}

label_values! {
    /// `baa_federation_validations_total{result}` and
    /// `baa_federation_round_trips_total{result}`.
    PeerCheck {
        /// The peer says the session is alive (or the round trip made a session).
        Alive = "alive",
        /// The peer says the session has ended (or the user is not signed in there).
        Ended = "ended",
        /// Signed with a key the peer does not publish, or not at all.
        UnknownKey = "unknown_key",
        /// The peer could not be asked.
        Unreachable = "unreachable",
        /// Anything else that went wrong (a bad answer, no linked account).
        Refused = "refused",
    }
}

label_values! {
    /// `baa_sso_sign_ins_total{result}`.
    SignInResult {
        /// A session was made.
        Ok = "ok",
        /// Unknown account, wrong password or disabled account.
        Failed = "failed",
        /// Refused by the throttle.
        Locked = "locked",
    }
}

label_values! {
    /// `baa_sso_pages_total{page}`.
    Page {
        /// The sign-in form.
        SignIn = "sign_in",
        /// The trust page.
        Trust = "trust",
        /// The error page.
        Error = "error",
        /// The sign-out confirmation.
        SignOut = "sign_out",
        /// The device page's code entry.
        Device = "device",
        /// The device page's confirmation.
        DeviceConfirm = "device_confirm",
    }
}

label_values! {
    /// `baa_sso_cookie_validations_total{result}`.
    CookieCheck {
        /// Both cookies name one live session.
        Valid = "valid",
        /// The cookies prove no live session.
        NoSession = "no_session",
        /// No session cookie was sent.
        Absent = "absent",
        /// The session cookie is not one the agency makes.
        Malformed = "malformed",
        /// No reference cookie came with the session cookie.
        NoReference = "no_reference",
        /// The reference is not signed by this agency, or expired.
        BadReference = "reference",
        /// The two cookies name different sessions.
        Mismatch = "mismatch",
        /// The session could not be read (logged as an error).
        StorageError = "storage_error",
        /// A session derived from a peer's, which the peer no longer
        /// vouches for (ended, unknown key, unreachable).
        PeerRefused = "peer_refused",
    }
}

label_values! {
    /// `baa_sso_backchannel_logouts_total{result}`.
    Delivery {
        /// The site took the logout token.
        Ok = "ok",
        /// An attempt failed; it will be tried again after a backoff.
        Retried = "retried",
        /// Every attempt failed.
        Failed = "failed",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::Metrics;

    /// The metric names an expression file mentions: `baa_…` and
    /// `process_…` words, histogram suffixes dropped.
    fn named(text: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("baa_") || word.starts_with("process_") {
                let name = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .unwrap_or(word);
                out.insert(name.to_string());
            }
        }
        out
    }

    /// Every metric the Grafana dashboard and the alert rules in `ops/`
    /// query is one a node registers: a renamed metric cannot leave a panel
    /// or an alert silently empty.
    #[test]
    fn the_dashboard_and_the_alerts_name_only_registered_metrics() {
        let ops = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops");
        let metrics = Metrics::new();
        let registered: BTreeSet<&str> = metrics.families().iter().map(String::as_str).collect();
        for file in ["grafana/baa.json", "prometheus/alerts.yml"] {
            let text = std::fs::read_to_string(ops.join(file)).unwrap();
            let names = named(&text);
            assert!(names.len() > 5, "{file} names {names:?}");
            for name in names {
                // Test series of the alerts' unit tests are not in this file.
                assert!(
                    registered.contains(name.as_str()),
                    "{file} queries {name}, which no node registers"
                );
            }
        }
    }
}
