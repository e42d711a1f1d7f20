//! The token file: where the app keeps its session between runs. Written
//! with mode 0600 from creation (a temporary file in the same directory,
//! then renamed over the old one), in a directory created 0700. A lock file
//! next to it serialises refreshes between concurrent `baa` processes: with
//! refresh-token rotation, two processes refreshing with the same token
//! would look like token theft to the agency.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Refresh when the access token expires within this many milliseconds.
pub const REFRESH_MARGIN_MS: u64 = 30_000;

/// What the token file holds. Not `Debug`-printed with its secrets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenFile {
    /// Base URL of the agency.
    pub agency: String,
    /// The app's client id at the agency.
    pub client_id: String,
    /// The agency's issuer identifier.
    pub issuer: String,
    /// The access token.
    pub access_token: String,
    /// The refresh token, when one was issued.
    pub refresh_token: Option<String>,
    /// When the access token expires (ms since the epoch; 0 when unknown).
    pub expires_at_ms: u64,
    /// The CA file trusted for the agency's TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// `HOST=IP` overrides used to reach the agency.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolve: Vec<String>,
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFile")
            .field("agency", &self.agency)
            .field("client_id", &self.client_id)
            .field("issuer", &self.issuer)
            .field("access_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at_ms", &self.expires_at_ms)
            .field("ca", &self.ca)
            .field("resolve", &self.resolve)
            .finish()
    }
}

impl TokenFile {
    /// Whether the access token is expired or expires within the margin.
    pub fn expiring(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && now_ms.saturating_add(REFRESH_MARGIN_MS) >= self.expires_at_ms
    }
}

/// The default token file: `$XDG_CONFIG_HOME/baa/tokens.json`, else
/// `$HOME/.config/baa/tokens.json`.
pub fn default_path(xdg_config_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let absolute = |v: OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    xdg_config_home
        .and_then(absolute)
        .or_else(|| home.and_then(absolute).map(|h| h.join(".config")))
        .map(|base| base.join("baa").join("tokens.json"))
}

/// The token file at one path.
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
}

/// An exclusive lock on the token file, held until dropped.
pub struct FileLock {
    _file: File,
}

impl TokenStore {
    /// The store at `explicit`, else at the default path.
    pub fn new(explicit: Option<PathBuf>) -> anyhow::Result<Self> {
        let path = match explicit {
            Some(p) => p,
            None => default_path(
                std::env::var_os("XDG_CONFIG_HOME"),
                std::env::var_os("HOME"),
            )
            .context(
                "cannot find a home directory: pass --token-file FILE or set BAA_TOKEN_FILE",
            )?,
        };
        Ok(Self { path })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn dir(&self) -> &Path {
        self.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }

    fn create_dir(&self) -> anyhow::Result<()> {
        let dir = self.dir();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the directory {}", dir.display()))
    }

    /// The stored session, if there is one.
    pub fn load(&self) -> anyhow::Result<Option<TokenFile>> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", self.path.display()));
            }
        };
        if let Ok(meta) = fs::metadata(&self.path) {
            if meta.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "warning: the token file {} is readable by other users; run chmod 600 on it",
                    self.path.display()
                );
            }
        }
        // serde's messages may quote values; this file holds secrets.
        let tokens = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a baa token file (line {}, column {})",
                self.path.display(),
                e.line(),
                e.column()
            )
        })?;
        Ok(Some(tokens))
    }

    /// Replaces the stored session with `tokens`.
    pub fn save(&self, tokens: &TokenFile) -> anyhow::Result<()> {
        self.create_dir()?;
        let name = self
            .path
            .file_name()
            .with_context(|| format!("{} names no file", self.path.display()))?;
        let tmp = self.dir().join(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            super::oauth::random_string(6)
        ));
        let json = serde_json::to_vec_pretty(tokens).context("encoding the token file")?;
        let written = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing {}", self.path.display()));
        }
        Ok(())
    }

    /// Deletes the stored session; nothing to do when there is none.
    pub fn delete(&self) -> anyhow::Result<()> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting {}", self.path.display())),
        }
    }

    /// Waits for the exclusive lock on the token file.
    pub async fn lock(&self) -> anyhow::Result<FileLock> {
        self.create_dir()?;
        let mut name = self
            .path
            .file_name()
            .with_context(|| format!("{} names no file", self.path.display()))?
            .to_os_string();
        name.push(".lock");
        let path = self.dir().join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        let locked = tokio::task::spawn_blocking(move || -> std::io::Result<File> {
            loop {
                // SAFETY: flock on a file descriptor this closure owns through `file`.
                let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
                if rc == 0 {
                    return Ok(file);
                }
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        })
        .await
        .context("waiting for the token file lock")?;
        match locked {
            Ok(file) => Ok(FileLock { _file: file }),
            Err(e) => bail!("locking {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TokenFile {
        TokenFile {
            agency: "https://127.0.0.1:8441".into(),
            client_id: "baa-cli".into(),
            issuer: "https://login.baa.localtest:8441".into(),
            access_token: "at-secret".into(),
            refresh_token: Some("rt-secret".into()),
            expires_at_ms: 1_000_000,
            ca: Some("/tmp/ca.pem".into()),
            resolve: vec!["login.baa.localtest=127.0.0.1".into()],
        }
    }

    #[test]
    fn written_0600_in_a_0700_directory_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("baa").join("tokens.json");
        let store = TokenStore::new(Some(path.clone())).unwrap();
        assert!(store.load().unwrap().is_none());
        store.save(&sample()).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(store.load().unwrap(), Some(sample()));

        // Replacing keeps the mode and leaves no temporary file behind.
        let mut next = sample();
        next.access_token = "at-2".into();
        next.ca = None;
        next.resolve.clear();
        store.save(&next).unwrap();
        assert_eq!(store.load().unwrap(), Some(next));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("tokens.json")]);

        let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        for k in [
            "agency",
            "client_id",
            "issuer",
            "access_token",
            "refresh_token",
            "expires_at_ms",
        ] {
            assert!(json.get(k).is_some(), "{k} missing");
        }
        assert!(json.get("ca").is_none());

        store.delete().unwrap();
        assert!(store.load().unwrap().is_none());
        store.delete().unwrap();
    }

    #[test]
    fn a_broken_file_does_not_echo_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        fs::write(
            &path,
            br#"{"access_token": 5, "refresh_token": "rt-secret"}"#,
        )
        .unwrap();
        let e = TokenStore::new(Some(path)).unwrap().load().unwrap_err();
        assert!(!format!("{e:#}").contains("rt-secret"));
    }

    #[test]
    fn debug_redacts_tokens() {
        let s = format!("{:?}", sample());
        assert!(!s.contains("at-secret") && !s.contains("rt-secret"));
    }

    #[test]
    fn expiring_within_the_margin() {
        let t = sample();
        assert!(!t.expiring(1_000_000 - REFRESH_MARGIN_MS - 1));
        assert!(t.expiring(1_000_000 - REFRESH_MARGIN_MS));
        assert!(t.expiring(2_000_000));
        let unknown = TokenFile {
            expires_at_ms: 0,
            ..sample()
        };
        assert!(!unknown.expiring(u64::MAX));
    }

    #[test]
    fn default_location() {
        assert_eq!(
            default_path(Some("/x/cfg".into()), Some("/home/u".into())),
            Some(PathBuf::from("/x/cfg/baa/tokens.json"))
        );
        assert_eq!(
            default_path(None, Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.config/baa/tokens.json"))
        );
        // A relative XDG_CONFIG_HOME is ignored, as the spec says.
        assert_eq!(
            default_path(Some("rel".into()), Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.config/baa/tokens.json"))
        );
        assert_eq!(default_path(None, None), None);
    }

    #[tokio::test]
    async fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(Some(dir.path().join("tokens.json"))).unwrap();
        let held = store.lock().await.unwrap();
        let other = store.clone();
        let waiter = tokio::spawn(async move { other.lock().await.map(drop) });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
