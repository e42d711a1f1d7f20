//! What lies at rest: a search of every byte of every file under some
//! directories (nodes' data directories, backups) for secrets that must
//! never be stored there in the clear, with its proof that it reads them (a
//! search for a value that is stored must find it).

use std::path::{Path, PathBuf};

/// A secret searched for, named for the failure message.
#[derive(Clone)]
pub struct Secret {
    /// What it is (never its value).
    pub name: String,
    /// Its bytes, in one form it could be stored in (at least 16 bytes).
    pub bytes: Vec<u8>,
}

impl Secret {
    /// `bytes`, named `name`.
    pub fn new(name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        let bytes = bytes.into();
        let name = name.into();
        assert!(bytes.len() >= 16, "{name}: too short to search for");
        Secret { name, bytes }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({}, {} bytes)", self.name, self.bytes.len())
    }
}

/// Every file under `paths` (files or directories), recursively; symbolic
/// links are not followed.
pub fn files_under(paths: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        let meta = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .map(|e| e.expect("directory entry").path())
                .collect();
            entries.sort();
            for e in entries {
                walk(&e, out);
            }
        } else if meta.is_file() {
            out.push(p.to_path_buf());
        }
    }
    let mut out = Vec::new();
    for p in paths {
        walk(p, &mut out);
    }
    out
}

/// For each of `needles`, the files under `paths` whose bytes contain it.
pub fn find_in_files(paths: &[PathBuf], needles: &[&[u8]]) -> Vec<Vec<PathBuf>> {
    let finders: Vec<memchr::memmem::Finder<'_>> =
        needles.iter().map(memchr::memmem::Finder::new).collect();
    let mut found = vec![Vec::new(); needles.len()];
    for file in files_under(paths) {
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (i, f) in finders.iter().enumerate() {
            if f.find(&bytes).is_some() {
                found[i].push(file.clone());
            }
        }
    }
    found
}

/// Panics naming each of `secrets` found in a file under `paths`, and the
/// files; also if there are no files at all to search.
pub fn assert_no_key_material(paths: &[PathBuf], secrets: &[Secret]) {
    assert!(
        !files_under(paths).is_empty(),
        "no file to search under {paths:?}"
    );
    let needles: Vec<&[u8]> = secrets.iter().map(|s| s.bytes.as_slice()).collect();
    let leaks: Vec<String> = find_in_files(paths, &needles)
        .into_iter()
        .zip(secrets)
        .filter(|(files, _)| !files.is_empty())
        .map(|(files, s)| format!("{} in {files:?}", s.name))
        .collect();
    assert!(
        leaks.is_empty(),
        "key material at rest in the clear:\n{}",
        leaks.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_finds_what_is_there_in_any_file_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        let secret = [7u8; 40];
        let mut data = vec![0u8; 100_000];
        data[77_000..77_040].copy_from_slice(&secret);
        std::fs::write(sub.join("blob"), &data).unwrap();
        std::fs::write(dir.path().join("other"), b"nothing here at all, nothing").unwrap();
        let paths = vec![dir.path().to_path_buf()];
        let found = find_in_files(&paths, &[&secret, &[8u8; 40]]);
        assert_eq!(found, vec![vec![sub.join("blob")], vec![]]);
        assert_no_key_material(&paths, &[Secret::new("absent", [8u8; 40])]);
        let leak = std::panic::catch_unwind(|| {
            assert_no_key_material(&paths, &[Secret::new("the test secret", secret)])
        });
        assert!(leak.is_err(), "a secret that is there must be found");
    }
}
