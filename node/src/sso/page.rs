//! Pages of the admin lists (users, sites, a user's sessions): the query
//! checked, and the cursor a page hands out. A page is a range scan of one
//! key family from just after the cursor (see `StateReader::named_page`),
//! so it costs its `limit` whatever the family's size, and the order is
//! the keys' order: an item added or removed between two pages moves no
//! other item, so paging sees every item that stays exactly once.
//!
//! The cursor is the own key of the last item (a username, a client id, a
//! session's storage key), base64url without padding: opaque to clients,
//! and never a secret (a session's storage key is the hash of its secret,
//! as stored at rest).

use baa_proto::api::{ListQuery, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::error::{NodeError, Result};
use crate::raft::state_machine::KeyPage;

/// The longest prefix, in bytes: no name is longer.
const MAX_PREFIX: usize = 64;
/// The longest key a cursor may name, in bytes: no own key is longer.
const MAX_CURSOR_KEY: usize = 64;

/// A checked [`ListQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// At most this many items.
    pub limit: usize,
    /// Start after this own key (the decoded cursor).
    pub after: Option<Vec<u8>>,
    /// Only own keys with this prefix.
    pub prefix: String,
}

impl Page {
    /// Checks `q`: a limit of 1 to [`MAX_PAGE_LIMIT`], a cursor this node
    /// handed out (in form), a prefix no longer than a name.
    pub fn parse(q: &ListQuery) -> Result<Self> {
        let limit = q.limit.unwrap_or(DEFAULT_PAGE_LIMIT);
        if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
            return Err(NodeError::invalid(format!(
                "limit must be 1 to {MAX_PAGE_LIMIT}, not {limit}"
            )));
        }
        let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
        let prefix = q.prefix.clone().unwrap_or_default();
        if prefix.len() > MAX_PREFIX {
            return Err(NodeError::invalid(format!(
                "prefix must be at most {MAX_PREFIX} bytes"
            )));
        }
        Ok(Page {
            limit: limit as usize,
            after,
            prefix,
        })
    }

    /// The cursor to start after, as the reader takes it.
    pub fn after(&self) -> Option<&[u8]> {
        self.after.as_deref()
    }

    /// [`Page::parse`] for a list whose keys have no name to filter by.
    pub fn parse_without_prefix(q: &ListQuery) -> Result<Self> {
        let page = Self::parse(q)?;
        if !page.prefix.is_empty() {
            return Err(NodeError::invalid("this list takes no prefix"));
        }
        Ok(page)
    }
}

/// The items of `page`, each made into its view, and the cursor of the
/// next page.
pub fn views<T, V>(
    page: KeyPage<T>,
    view: impl FnMut(&T) -> Result<V>,
) -> Result<(Vec<V>, Option<String>)> {
    let items = page.items.iter().map(view).collect::<Result<_>>()?;
    Ok((items, page.next_after.as_deref().map(cursor)))
}

/// The cursor that starts the next page after own key `key`.
fn cursor(key: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

fn decode_cursor(cursor: &str) -> Result<Vec<u8>> {
    let malformed = || NodeError::invalid("malformed cursor: pass a next_cursor back unchanged");
    let key = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| malformed())?;
    if key.is_empty() || key.len() > MAX_CURSOR_KEY {
        return Err(malformed());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use baa_proto::ErrorCode;

    fn query(limit: Option<u32>, cursor: Option<&str>, prefix: Option<&str>) -> ListQuery {
        ListQuery {
            limit,
            cursor: cursor.map(String::from),
            prefix: prefix.map(String::from),
            ..Default::default()
        }
    }

    fn refused(q: ListQuery) -> String {
        match Page::parse(&q) {
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::InvalidRequest, "{e}");
                e.to_string()
            }
            Ok(p) => panic!("{q:?} accepted as {p:?}"),
        }
    }

    #[test]
    fn defaults_and_bounds_of_the_limit() {
        let p = Page::parse(&ListQuery::default()).unwrap();
        assert_eq!((p.limit, p.after(), p.prefix.as_str()), (100, None, ""));
        assert_eq!(Page::parse(&query(Some(1), None, None)).unwrap().limit, 1);
        assert_eq!(
            Page::parse(&query(Some(1000), None, None)).unwrap().limit,
            1000
        );
        assert!(refused(query(Some(0), None, None)).contains("limit must be 1 to 1000"));
        assert!(refused(query(Some(1001), None, None)).contains("not 1001"));
        assert!(refused(query(Some(100_000), None, None)).contains("limit"));
    }

    #[test]
    fn a_cursor_names_the_key_it_was_made_from() {
        for key in [&b"alice"[..], &[0u8, 255, 7, 62, 63][..], &[0xAB; 32][..]] {
            let c = cursor(key);
            assert!(
                c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{c}"
            );
            let p = Page::parse(&query(None, Some(&c), None)).unwrap();
            assert_eq!(p.after(), Some(key));
        }
    }

    #[test]
    fn malformed_cursors_are_refused() {
        let too_long = cursor(&[b'a'; 65]);
        for bad in ["", "not base64!", "YWxpY2U=", "a", too_long.as_str()] {
            assert!(
                refused(query(None, Some(bad), None)).contains("malformed cursor"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_prefix_is_bounded_and_only_where_it_applies() {
        let p = Page::parse(&query(None, None, Some("al"))).unwrap();
        assert_eq!(p.prefix, "al");
        assert!(refused(query(None, None, Some(&"a".repeat(65)))).contains("prefix"));
        let e = Page::parse_without_prefix(&query(None, None, Some("al"))).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidRequest);
        assert!(Page::parse_without_prefix(&query(Some(5), None, None)).is_ok());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// A list query decodes from any query string or is refused; one
        /// that decodes encodes and decodes to itself, and a page is read
        /// from it only with a limit of 1 to 1000.
        #[test]
        fn list_queries_decode_round_trip_and_bound_the_limit(
            s in "((limit|cursor|prefix|consistency|x)=[0-9A-Za-z_%+-]{0,12}&?){0,4}|\\PC{0,40}",
        ) {
            if let Ok(q) = serde_urlencoded::from_str::<ListQuery>(&s) {
                let encoded = serde_urlencoded::to_string(&q).unwrap();
                proptest::prop_assert_eq!(serde_urlencoded::from_str::<ListQuery>(&encoded).unwrap(), q.clone());
                if Page::parse(&q).is_ok() {
                    proptest::prop_assert!((1..=1000).contains(&q.limit.unwrap_or(1)));
                }
                let _ = Page::parse_without_prefix(&q);
            }
        }

        /// Any cursor a page hands out is read back as the key it names.
        #[test]
        fn cursors_round_trip(key in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..=MAX_CURSOR_KEY)) {
            proptest::prop_assert_eq!(decode_cursor(&cursor(&key)).unwrap(), key);
        }
    }
}
