//! actix actors of the node, each the owner of some state: cookie
//! validation (its cache of verified references), cross-agency validation
//! (its cache of peers' answers), the federation
//! directory (peer agencies' configurations), ticket issue, token
//! translation (its memory of recorded use), the password-hashing pool and
//! periodic housekeeping (the reaper) and the delivery of the outbox of
//! back-channel logouts (the courier).

pub mod cookie_validator;
pub mod courier;
pub mod federation_directory;
pub mod hasher;
pub mod peer_sessions;
pub mod reaper;
pub mod ticket_issuer;
pub mod token_translator;
