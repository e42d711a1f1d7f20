//! Partner sites (OIDC clients): registration with their options, and
//! removal, which ends every trust in the site.

use baa_proto::command::{CommandResult, Outcome};
use baa_proto::sso::{IdTokenAlg, Site, SiteOptions};
use baa_proto::ErrorCode;

use super::super::keyspace::{key, PREFIX_SITE, PREFIX_SITE_ALG, PREFIX_SITE_OPTIONS};
use super::super::staged::{invalid, refuse, Staged};
use super::trust;
use crate::raft::StorageError;

/// Registers a site; options and an ID-token algorithm other than the
/// defaults are stored apart, so the site record keeps the shape earlier
/// releases stored.
pub(super) fn register(
    st: &mut Staged<'_>,
    now: u64,
    site: &Site,
    options: SiteOptions,
    id_token_alg: IdTokenAlg,
) -> Result<CommandResult, StorageError> {
    if let Err(e) = baa_proto::sso::validate_site(site) {
        return Ok(Err(invalid(e)));
    }
    let k = key(PREFIX_SITE, site.client_id.as_bytes());
    if st.get::<Site>(&k)?.is_some() {
        return refuse(
            ErrorCode::SiteExists,
            format!("site {} already exists", site.client_id),
        );
    }
    let mut site = site.clone();
    site.created_ms = now;
    st.put(&k, &site)?;
    if options != SiteOptions::default() {
        st.put(
            &key(PREFIX_SITE_OPTIONS, site.client_id.as_bytes()),
            &options,
        )?;
    }
    if id_token_alg != IdTokenAlg::default() {
        st.put(
            &key(PREFIX_SITE_ALG, site.client_id.as_bytes()),
            &id_token_alg,
        )?;
    }
    Ok(Ok(Outcome::Site(Box::new(site))))
}

/// Removes a site, its options, and every trust in it with the tokens that
/// hang off those.
pub(super) fn remove(st: &mut Staged<'_>, client_id: &str) -> Result<CommandResult, StorageError> {
    let k = key(PREFIX_SITE, client_id.as_bytes());
    if st.get::<Site>(&k)?.is_none() {
        return refuse(ErrorCode::SiteNotFound, format!("no site {client_id}"));
    }
    st.remove(&k);
    st.remove(&key(PREFIX_SITE_OPTIONS, client_id.as_bytes()));
    st.remove(&key(PREFIX_SITE_ALG, client_id.as_bytes()));
    trust::end_for_site(st, client_id)?;
    Ok(Ok(Outcome::Removed(true)))
}
