//! Deadlines for slow clients (slowloris and its slow-body variant). A
//! client must finish its TLS handshake within [`HANDSHAKE_TIMEOUT`] and
//! send its whole request head within [`HEAD_TIMEOUT`] (actix-web closes the
//! connection, with 408 for a started head; both set in `http::start`).
//! Once the head is in, actix-web would wait for the body as long as bytes
//! keep coming, one a second if need be, holding the connection and the
//! handler; so here the body must arrive whole within [`BODY_TIMEOUT`] of
//! the head. Past it the handler's read fails with [`TimedOut`], which the
//! extractors' error handlers answer 408 `request_timeout`, and actix-web
//! closes the connection (the body was not read to its end).

use std::pin::Pin;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::HttpMessage;
use futures::{Stream, StreamExt};

/// A request body as a stream of chunks.
type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>;

/// Time a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Time a client has to send its request head (request line and headers).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Time a client has to send its request body once the head is in. The
/// largest body the public port takes (a gateway request, 10 MiB) needs
/// about 1 MB/s to make it.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The error a body read fails with once [`BODY_TIMEOUT`] has passed.
#[derive(Debug)]
pub struct TimedOut;

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s",
            BODY_TIMEOUT.as_secs()
        )
    }
}

impl std::error::Error for TimedOut {}

/// Whether a body read failed because the body came too slowly.
pub fn timed_out(e: &PayloadError) -> bool {
    match e {
        PayloadError::Io(io) => io.get_ref().is_some_and(|inner| inner.is::<TimedOut>()),
        _ => false,
    }
}

/// Gives the request's body [`BODY_TIMEOUT`] from now to arrive whole.
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let payload = req.take_payload();
    if !matches!(payload, Payload::None) {
        let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
        let bounded = futures::stream::unfold(Some(payload), move |state| async move {
            let mut payload = state?;
            match tokio::time::timeout_at(deadline, payload.next()).await {
                Ok(Some(chunk)) => Some((chunk, Some(payload))),
                Ok(None) => None,
                Err(_) => {
                    let e = std::io::Error::new(std::io::ErrorKind::TimedOut, TimedOut);
                    Some((Err(PayloadError::Io(e)), None))
                }
            }
        });
        req.set_payload(Payload::from(Box::pin(bounded) as BodyStream));
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_deadline_s_own_error_is_a_timeout() {
        let ours = std::io::Error::new(std::io::ErrorKind::TimedOut, TimedOut);
        assert!(timed_out(&PayloadError::Io(ours)));
        let other = std::io::Error::new(std::io::ErrorKind::TimedOut, "a socket timeout");
        assert!(!timed_out(&PayloadError::Io(other)));
        assert!(!timed_out(&PayloadError::Overflow));
        assert!(!timed_out(&PayloadError::Incomplete(None)));
    }
}
