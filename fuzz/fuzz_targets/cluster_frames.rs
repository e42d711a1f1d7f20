//! The cluster port's request frames, decoded as `http::cluster_port`
//! decodes them (`baa_proto::codec::decode`, the frame limit): whatever
//! decodes re-encodes canonically (the encoding decodes and encodes to the
//! same bytes, no longer than the input). The first byte picks the frame.
#![no_main]

use baa_node::raft::TypeConfig;
use baa_proto::api::{ForwardedWrite, MembershipChange};
use baa_proto::codec::{decode, encode};
use libfuzzer_sys::fuzz_target;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn check<T: Serialize + DeserializeOwned>(bytes: &[u8]) {
    let Ok(value) = decode::<T>(bytes) else {
        return;
    };
    let encoded = encode(&value).expect("what decoded encodes");
    assert!(
        encoded.len() <= bytes.len(),
        "the canonical encoding is longer"
    );
    let again: T = decode(&encoded).expect("an encoding decodes");
    assert_eq!(encode(&again).expect("encodes"), encoded, "round trip");
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    match pick % 6 {
        0 => check::<AppendEntriesRequest<TypeConfig>>(bytes),
        1 => check::<VoteRequest<u64>>(bytes),
        2 => check::<InstallSnapshotRequest<TypeConfig>>(bytes),
        3 => check::<ForwardedWrite>(bytes),
        4 => check::<MembershipChange>(bytes),
        _ => check::<()>(bytes),
    }
});
