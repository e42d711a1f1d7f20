//! `/admin/v1/cluster/…`: initialise a cluster, add and remove members,
//! the cluster's status as this node and every member see it, and a
//! snapshot built on demand, and a backup of it streamed.

use actix_web::{web, HttpResponse};
use baa_proto::api::{JoinRequest, LeaveRequest, MembershipChange};

use super::Admin;
use crate::agency::Agency;
use crate::error::{NodeError, Result};

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::http::resource;
    use web::{get, post};
    cfg.service(resource("/cluster/init").route(post().to(cluster_init)))
        .service(resource("/cluster/join").route(post().to(cluster_join)))
        .service(resource("/cluster/leave").route(post().to(cluster_leave)))
        .service(resource("/cluster/status").route(get().to(cluster_status)))
        .service(resource("/cluster/members").route(get().to(cluster_members)))
        .service(resource("/cluster/snapshot").route(post().to(cluster_snapshot)))
        .service(resource("/cluster/backup").route(get().to(cluster_backup)));
}

async fn cluster_init(_: Admin, agency: web::Data<Agency>) -> Result<HttpResponse> {
    crate::key_rotation::initialize(&agency).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "initialized": true })))
}

async fn cluster_join(
    _: Admin,
    agency: web::Data<Agency>,
    body: web::Json<JoinRequest>,
) -> Result<HttpResponse> {
    let change = MembershipChange::Join(body.into_inner());
    Ok(HttpResponse::Ok().json(agency.change_membership(change).await?))
}

async fn cluster_leave(
    _: Admin,
    agency: web::Data<Agency>,
    body: web::Json<LeaveRequest>,
) -> Result<HttpResponse> {
    let change = MembershipChange::Leave(body.id);
    Ok(HttpResponse::Ok().json(agency.change_membership(change).await?))
}

async fn cluster_status(_: Admin, agency: web::Data<Agency>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(agency.status().await?))
}

/// `GET /admin/v1/cluster/members`: every member's own status, or why it
/// could not be had, gathered by this node over the cluster port.
async fn cluster_members(_: Admin, agency: web::Data<Agency>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(agency.member_statuses().await?))
}

/// `POST /admin/v1/cluster/snapshot`: this node builds a snapshot of its
/// state now (to measure one, or to purge its log); answers what it covers.
async fn cluster_snapshot(_: Admin, agency: web::Data<Agency>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(agency.snapshot_now().await?))
}

/// How long a backup waits for its snapshot: a build of a large state
/// takes far longer than a write.
const BACKUP_SNAPSHOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// `GET /admin/v1/cluster/backup`: this node builds a snapshot now (writes
/// go on meanwhile) and streams it as a backup file (see `backup`).
async fn cluster_backup(_: Admin, agency: web::Data<Agency>) -> Result<HttpResponse> {
    agency
        .snapshot_covering_now(BACKUP_SNAPSHOT_TIMEOUT)
        .await?;
    let (meta, file) = agency
        .state
        .current_snapshot()
        .map_err(|e| NodeError::Storage(format!("opening the snapshot: {e:#}")))?
        .ok_or_else(|| NodeError::Storage("no snapshot was built".into()))?;
    let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(("x-baa-backup-index", index.to_string()))
        .streaming(backup_body(meta, file, agency.config.sso.agency.clone())))
}

/// The backup of the snapshot `meta` whose data is `file`, as a response
/// body: a blocking task reads the file and hands chunks over a short
/// channel, so the state is never held whole. A failure midway cuts the
/// body short, which the reader's checks refuse.
fn backup_body(
    meta: crate::raft::SnapshotMeta,
    file: std::fs::File,
    agency: String,
) -> impl futures::Stream<Item = std::io::Result<web::Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<web::Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let open = || {
            let mut f = file.try_clone()?;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))?;
            Ok(f)
        };
        let out = std::io::BufWriter::with_capacity(256 * 1024, Chunks(tx.clone()));
        match crate::backup::write(meta, open, &agency, crate::clock::now_ms(), out) {
            Ok(h) => tracing::info!(
                index = h.index(),
                records = h.records,
                bytes = h.data_bytes,
                "backup streamed"
            ),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "backup cut short");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    })
}

/// Hands what is written to it to a response body, a chunk at a time.
struct Chunks(tokio::sync::mpsc::Sender<std::io::Result<web::Bytes>>);

impl std::io::Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(web::Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
