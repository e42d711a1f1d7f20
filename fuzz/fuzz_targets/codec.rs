//! The bincode codec (`baa_proto::codec`), under a counting allocator:
//!
//! - input over the limit is refused as `TooLarge` before decoding;
//! - what decodes re-encodes to bytes that decode to the same value, and
//!   that canonical encoding is never longer than the input;
//! - decoding never allocates by a declared length: the heap it holds at
//!   its peak stays under a bound set by the input's size and serde's
//!   1 MiB preallocation cap per open sequence, whatever length prefixes
//!   the input claims.
//!
//! The first byte picks the type and the limit; the rest is the frame.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use baa_proto::codec::{decode_with_limit, encode_with_limit, CodecError};
use baa_proto::command::{Command, Proposal};
use baa_proto::sso::SealedTicket;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                + (new_size - layout.size());
            PEAK.fetch_max(live, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The most heap a decode of `len` bytes may hold: bincode charges every
/// byte it reads to the limit, and serde preallocates at most 1 MiB for a
/// declared length, so the peak follows the input and the nesting (at most
/// three open sequences in these types), not what lengths the input claims.
fn heap_bound(len: usize) -> usize {
    3 * (1 << 20) + 256 * len
}

fn check<T: Serialize + DeserializeOwned>(bytes: &[u8], limit: u64) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let decoded = decode_with_limit::<T>(bytes, limit);
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert!(
        peak <= heap_bound(bytes.len()),
        "decoding {} bytes held {peak} bytes of heap",
        bytes.len()
    );
    if bytes.len() as u64 > limit {
        assert!(matches!(decoded, Err(CodecError::TooLarge { .. })));
        return;
    }
    let Ok(value) = decoded else { return };
    let encoded = encode_with_limit(&value, limit).expect("what decoded under the limit encodes");
    assert!(
        encoded.len() <= bytes.len(),
        "the canonical encoding is longer"
    );
    let again: T = decode_with_limit(&encoded, limit).expect("an encoding decodes");
    assert_eq!(
        encode_with_limit(&again, limit).expect("encodes"),
        encoded,
        "the round trip changed the value"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let limit = [16, 256, 4096, 1 << 24][usize::from(pick >> 4) % 4];
    match pick % 8 {
        0 => check::<String>(bytes, limit),
        1 => check::<Vec<Vec<u8>>>(bytes, limit),
        2 => check::<Vec<(u64, Option<String>)>>(bytes, limit),
        3 => check::<SealedTicket>(bytes, limit),
        4 => check::<Command>(bytes, limit),
        5 => check::<Proposal>(bytes, limit),
        6 => check::<(Vec<u8>, Vec<u8>)>(bytes, limit),
        _ => check::<Vec<String>>(bytes, limit),
    }
});
