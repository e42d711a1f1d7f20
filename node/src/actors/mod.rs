//! actix actors of the node: work that must not block the async workers
//! (password hashing) and periodic housekeeping (the reaper).

pub mod hasher;
pub mod reaper;
