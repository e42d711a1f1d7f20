//! The format versions of what a node keeps and says: its data directory
//! and the cluster port's RPCs (a backup file carries its own, see
//! `backup`). Each is a number this build writes and the highest it reads;
//! data of a newer version is refused with a message naming both, so that
//! a node rolled back after an upgrade stops instead of misreading what the
//! newer release left.
//!
//! Snapshot files live in the data directory and share its format; a
//! snapshot sent to a lagging follower travels as a cluster-port RPC, so a
//! change to the snapshot data's layout bumps both.
//!
//! Data written before versions existed is version 1: a data directory
//! without its `FORMAT` file, a request without the version header.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// The format of the data directory this build writes and the highest it reads.
pub const DATA_DIR_FORMAT: u32 = 1;

/// The file in a data directory that names its format.
pub const FORMAT_FILE: &str = "FORMAT";

/// The version of the cluster port's RPCs this build speaks and the highest it accepts.
pub const WIRE_VERSION: u32 = 1;

/// The header every cluster-port request carries its wire version in.
pub const WIRE_VERSION_HEADER: &str = "baa-wire-version";

/// Checks the format of the data directory `dir` before anything opens it,
/// and names the current one in a directory that has none yet (new, or
/// written before formats were named: both are format 1).
pub fn claim_data_dir_format(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => check_data_dir_format(dir, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_data_dir_format(dir),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the current format into the data directory `dir`.
pub fn write_data_dir_format(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(FORMAT_FILE);
    let tmp = dir.join(format!("{FORMAT_FILE}.tmp"));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    writeln!(f, "{DATA_DIR_FORMAT}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Refuses a data directory whose `FORMAT` file (`text`) names a format
/// this build does not read.
fn check_data_dir_format(dir: &Path, text: &str) -> anyhow::Result<()> {
    let format: u32 = text.trim().parse().with_context(|| {
        format!(
            "{} is corrupt: it should hold the data directory's format number",
            dir.join(FORMAT_FILE).display()
        )
    })?;
    anyhow::ensure!(
        format <= DATA_DIR_FORMAT,
        "data directory {} is in format {format}, newer than this baa reads (≤ {DATA_DIR_FORMAT}); \
         run the newer baa that wrote it",
        dir.display()
    );
    Ok(())
}

/// The wire version a cluster-port request says it speaks (`header`: the
/// value of [`WIRE_VERSION_HEADER`], absent from nodes older than
/// versions), or why this node refuses it.
pub fn accept_wire_version(header: Option<&[u8]>) -> Result<u32, String> {
    let Some(raw) = header else {
        return Ok(1);
    };
    let version: u32 = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("{WIRE_VERSION_HEADER} is not a version number"))?;
    if version == 0 || version > WIRE_VERSION {
        return Err(format!(
            "cluster RPC version {version} is not spoken here: this node speaks versions 1 to \
             {WIRE_VERSION}; upgrade it to join a newer cluster"
        ));
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_or_unversioned_data_dir_is_claimed_as_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        claim_data_dir_format(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap();
        assert_eq!(text.trim(), DATA_DIR_FORMAT.to_string());
        claim_data_dir_format(dir.path()).unwrap();
    }

    #[test]
    fn a_data_dir_of_a_newer_format_is_refused_naming_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let newer = DATA_DIR_FORMAT + 1;
        std::fs::write(dir.path().join(FORMAT_FILE), format!("{newer}\n")).unwrap();
        let e = claim_data_dir_format(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
        assert!(e.contains(&format!("format {newer}, newer")), "{e}");
        assert!(e.contains(&format!("≤ {DATA_DIR_FORMAT}")), "{e}");
        // Left as it was.
        let text = std::fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap();
        assert_eq!(text.trim(), newer.to_string());
    }

    #[test]
    fn a_corrupt_format_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FORMAT_FILE), "two").unwrap();
        let e = claim_data_dir_format(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is corrupt"), "{e}");
    }

    #[test]
    fn wire_versions_up_to_ours_are_accepted_and_an_absent_header_is_version_1() {
        assert_eq!(accept_wire_version(None), Ok(1));
        assert_eq!(accept_wire_version(Some(b"1")), Ok(1));
        assert_eq!(
            accept_wire_version(Some(WIRE_VERSION.to_string().as_bytes())),
            Ok(WIRE_VERSION)
        );
    }

    #[test]
    fn a_newer_or_garbled_wire_version_is_refused_saying_what_this_node_speaks() {
        let newer = (WIRE_VERSION + 1).to_string();
        let e = accept_wire_version(Some(newer.as_bytes())).unwrap_err();
        assert!(e.contains(&format!("version {newer} is not spoken")), "{e}");
        assert!(e.contains(&format!("versions 1 to {WIRE_VERSION}")), "{e}");
        assert!(accept_wire_version(Some(b"x")).is_err());
        assert!(accept_wire_version(Some(b"0")).is_err());
    }
}
