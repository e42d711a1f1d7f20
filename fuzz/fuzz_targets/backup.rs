//! The backup file reader (`backup::verify_from`):
//!
//! - arbitrary bytes never panic it, and never pass it but as a backup
//!   whose checksum, length, count and digest all hold;
//! - a backup written from records built from the input verifies with its
//!   header's count, and with any one byte changed, or cut anywhere, it
//!   is refused.
#![no_main]

use std::io::Write;

use baa_node::backup::{verify_from, write};
use baa_node::raft::SnapshotMeta;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// The snapshot data of `records`: u32 length, then the bincode record.
fn data(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let bytes = baa_proto::codec::encode_record(r).expect("encodes");
        out.write_all(&(bytes.len() as u32).to_le_bytes())
            .expect("writes");
        out.extend(bytes);
    }
    out
}

fn structured(u: &mut Unstructured) -> Result<()> {
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = u.arbitrary()?;
    records.sort();
    records.dedup_by(|a, b| a.0 == b.0);
    let data = data(&records);
    let mut file = Vec::new();
    let header = write(
        SnapshotMeta::default(),
        || Ok(data.as_slice()),
        "acme",
        u.arbitrary()?,
        &mut file,
    )
    .expect("writes");
    assert_eq!(header.records, records.len() as u64);
    let read = verify_from(file.as_slice(), file.len() as u64, |_| {}).expect("verifies");
    assert_eq!(read.records, header.records);
    let at = u.choose_index(file.len())?;
    let by: u8 = u.int_in_range(1..=255)?;
    let mut altered = file.clone();
    altered[at] = altered[at].wrapping_add(by);
    assert!(
        verify_from(altered.as_slice(), altered.len() as u64, |_| {}).is_err(),
        "byte {at} changed"
    );
    let cut = u.choose_index(file.len())?;
    assert!(
        verify_from(&file[..cut], cut as u64, |_| {}).is_err(),
        "cut at {cut}"
    );
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = verify_from(data, data.len() as u64, |_| {});
    let _ = structured(&mut Unstructured::new(data));
});
