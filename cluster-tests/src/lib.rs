//! Cluster test harness for baa: real `baa serve` processes with real TLS and
//! sled directories on loopback, a TCP proxy in front of every node's cluster
//! port for partitions, a typed admin client, steady writers, polling helpers,
//! and seeded fault schedules with a history checker.
//! Used by the `cluster` test binary and by benchmark programs.

pub mod at_rest;
pub mod bench;
pub mod browser;
pub mod client;
pub mod federation;
pub mod harness;
pub mod load;
pub mod partner;
pub mod poll;
pub mod prometheus;
pub mod proxy;
pub mod raw;
pub mod schedule;
pub mod sso;
pub mod upstream;

pub use browser::Browser;
pub use client::{metric_value, AdminClient, ApiError};
pub use harness::{CliOutput, Cluster, ClusterOptions, Node};
pub use load::{Load, Writer, WriterReport};
pub use poll::{poll_until, try_poll_until};
pub use proxy::Proxy;
