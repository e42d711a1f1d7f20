//! The ticket issuer: makes one-time login tickets (authorization codes),
//! sealed with the replicated ticket key (see `sealing`): issuing writes
//! nothing, any node can open and redeem them, and only the redemption is
//! replicated. One issuer runs on each HTTP worker.

use std::sync::Arc;

use actix::{Actor, Context, Handler, Message, ResponseFuture};
use baa_proto::sso::{SealedTicket, SecretHash};

use crate::agency::Agency;
use crate::clock::now_ms;
use crate::error::NodeError;

/// What a ticket is for.
#[derive(Debug, Clone)]
pub struct TicketRequest {
    /// The session the ticket logs into the site.
    pub session_key: SecretHash,
    /// The site.
    pub client_id: String,
    /// The exact registered redirect URI it goes to.
    pub redirect_uri: String,
    /// The site's nonce.
    pub nonce: Option<String>,
    /// PKCE S256 challenge.
    pub code_challenge: Option<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
}

/// Issue a ticket; the answer is the ticket value (a secret).
#[derive(Message)]
#[rtype(result = "Result<String, NodeError>")]
pub struct IssueTicket(pub TicketRequest);

/// Issues login tickets.
pub struct TicketIssuer {
    agency: Arc<Agency>,
}

impl TicketIssuer {
    /// An issuer for `agency`.
    pub fn new(agency: Arc<Agency>) -> Self {
        Self { agency }
    }
}

impl super::Metered for TicketIssuer {
    const NAME: &'static str = "ticket_issuer";
}

impl Actor for TicketIssuer {
    type Context = Context<Self>;
}

/// Issues a ticket for `req` (for callers that are not actors).
pub async fn issue(agency: &Agency, req: TicketRequest) -> Result<String, NodeError> {
    let now = now_ms();
    let ticket = SealedTicket {
        id: crate::secrets::random_bytes::<16>(),
        session_key: req.session_key,
        client_id: req.client_id,
        redirect_uri: req.redirect_uri,
        nonce: req.nonce,
        code_challenge: req.code_challenge,
        scopes: req.scopes,
        issued_ms: now,
        expires_ms: now + agency.config.sso.ticket_ttl_s * 1000,
    };
    if !agency.tickets.has_current()? {
        // Data of a release without ticket keys: the first ticket makes one.
        crate::key_rotation::ensure_ticket_key(agency).await?;
        agency
            .read_barrier(baa_proto::command::Consistency::Linearizable)
            .await?;
        agency.tickets.invalidate();
    }
    let value = agency.tickets.seal(&ticket)?;
    agency.metrics.tickets_issued.inc();
    Ok(value)
}

impl Handler<IssueTicket> for TicketIssuer {
    type Result = ResponseFuture<Result<String, NodeError>>;

    fn handle(&mut self, msg: IssueTicket, _: &mut Self::Context) -> Self::Result {
        let agency = self.agency.clone();
        Box::pin(async move { issue(&agency, msg.0).await })
    }
}
