//! baa-partner-site: the demo partner site, an OpenID Connect relying party
//! (confidential client) that signs users in through a baa agency. `baa
//! demo` and the cluster tests run it as its own process. It checks the
//! agency's tokens with its own code (JWKS, signature, claims), never with
//! the agency's, so a mistake in one cannot hide in the other.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::todo,
    clippy::await_holding_lock
)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod oidc;
mod pages;
mod site;
mod tls;

pub use oidc::ID_TOKEN_ALGS;
pub use site::{run, SiteConfig};
