//! Petrel's artifact store: where datasets and model bundles live.
//!
//! Services address artifacts by URI (`file:///...` or `s3://bucket/key`), record those URIs in
//! their tables and events, and read them back through [`ArtifactStore`]. [`open_with`] picks
//! the backend from the root's scheme: a local directory ([`LocalStore`]) or an S3 bucket and
//! prefix ([`S3Store`]).

mod s3;

pub use s3::{MULTIPART_THRESHOLD, PART_SIZE, S3Options, S3Store};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "invalid artifact key {0:?}: use relative paths of letters, digits, '-', '_', '.' and '/'"
    )]
    InvalidKey(String),
    #[error("artifact URI {0:?} is not in this store")]
    ForeignUri(String),
    #[error("artifact {0} does not exist")]
    NotFound(String),
    #[error(
        "unsupported artifact root {0:?}: use a directory path, a file:// URL or s3://bucket/prefix"
    )]
    UnsupportedRoot(String),
    /// The object store refused or failed a call (credentials, network, missing bucket).
    #[error("the object store failed for {uri}")]
    Remote {
        uri: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("unexpected answer from the object store: {0}")]
    Protocol(String),
    #[error("artifact I/O failed for {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A place to put and get immutable blobs.
#[async_trait]
pub trait ArtifactStore: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` under `key` (e.g. `datasets/ab12.csv`) and returns the artifact's URI.
    /// Writing the same key again replaces it atomically; readers never see a partial file.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<String, StoreError>;
    /// Reads an artifact by the URI `put` returned.
    async fn get(&self, uri: &str) -> Result<Bytes, StoreError>;
    /// Stores the file at `path` under `key`, streaming it (a part at a time for large files).
    async fn put_file(&self, key: &str, path: &Path) -> Result<String, StoreError>;
    /// Writes an artifact to `path`, streaming it; returns its size in bytes.
    async fn get_to_file(&self, uri: &str, path: &Path) -> Result<u64, StoreError>;
}

/// `sha256:<hex>` of `bytes`: how Petrel names content.
pub fn content_hash(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Opens the store configured by `root`: a directory path, a `file://` URL, or
/// `s3://bucket/prefix` reached with `s3`.
pub async fn open_with(root: &str, s3: &S3Options) -> Result<Arc<dyn ArtifactStore>, StoreError> {
    if root.starts_with("s3://") {
        return Ok(Arc::new(S3Store::connect(root, s3).await?));
    }
    open(root)
}

/// Opens a local store: a directory path or a `file://` URL (`s3://` needs [`open_with`]).
pub fn open(root: &str) -> Result<Arc<dyn ArtifactStore>, StoreError> {
    let path = if let Some(p) = root.strip_prefix("file://") {
        PathBuf::from(p)
    } else if root.contains("://") {
        return Err(StoreError::UnsupportedRoot(root.to_owned()));
    } else {
        PathBuf::from(root)
    };
    Ok(Arc::new(LocalStore::new(path)?))
}

/// A key is a relative path of letters, digits, `-`, `_`, `.` and `/`, with no empty, `.` or
/// `..` segment: it can never name anything outside its store.
pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidKey(key.to_owned()))
    }
}

/// Artifacts as files under a directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl LocalStore {
    /// A store rooted at `root` (made absolute, so URIs stay valid from any working directory).
    pub fn new(root: PathBuf) -> Result<Self, StoreError> {
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir().map_err(io(&root))?.join(&root)
        };
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn check_key(key: &str) -> Result<(), StoreError> {
        check_key(key)
    }

    fn path_of(&self, uri: &str) -> Result<PathBuf, StoreError> {
        let path = uri
            .strip_prefix("file://")
            .ok_or_else(|| StoreError::ForeignUri(uri.to_owned()))?;
        let rel = Path::new(path)
            .strip_prefix(&self.root)
            .map_err(|_| StoreError::ForeignUri(uri.to_owned()))?;
        Self::check_key(&rel.to_string_lossy())?;
        Ok(self.root.join(rel))
    }
}

#[async_trait]
impl ArtifactStore for LocalStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<String, StoreError> {
        Self::check_key(key)?;
        let path = self.root.join(key);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        }
        // Write aside and rename, so a crash never leaves a truncated artifact under the key.
        let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::now_v7().simple()));
        tokio::fs::write(&tmp, &bytes).await.map_err(io(&tmp))?;
        tokio::fs::rename(&tmp, &path).await.map_err(io(&path))?;
        Ok(format!("file://{}", path.display()))
    }

    async fn get(&self, uri: &str) -> Result<Bytes, StoreError> {
        let path = self.path_of(uri)?;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Bytes::from(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(uri.to_owned()))
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    async fn put_file(&self, key: &str, source: &Path) -> Result<String, StoreError> {
        Self::check_key(key)?;
        let path = self.root.join(key);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        }
        let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::now_v7().simple()));
        tokio::fs::copy(source, &tmp).await.map_err(io(source))?;
        tokio::fs::rename(&tmp, &path).await.map_err(io(&path))?;
        Ok(format!("file://{}", path.display()))
    }

    async fn get_to_file(&self, uri: &str, target: &Path) -> Result<u64, StoreError> {
        let path = self.path_of(uri)?;
        match tokio::fs::copy(&path, target).await {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(uri.to_owned()))
            }
            Err(e) => Err(io(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root() -> PathBuf {
        std::env::temp_dir().join(format!("petrel-store-{}", uuid::Uuid::now_v7().simple()))
    }

    #[tokio::test]
    async fn put_then_get_round_trips() {
        let store = open(temp_root().to_str().unwrap()).unwrap();
        let uri = store
            .put("datasets/a.csv", Bytes::from_static(b"x,y\n1,2\n"))
            .await
            .unwrap();
        assert!(uri.starts_with("file:///"));
        assert_eq!(
            store.get(&uri).await.unwrap(),
            Bytes::from_static(b"x,y\n1,2\n")
        );
        // Overwrite is atomic and visible.
        let again = store
            .put("datasets/a.csv", Bytes::from_static(b"z"))
            .await
            .unwrap();
        assert_eq!(again, uri);
        assert_eq!(store.get(&uri).await.unwrap(), Bytes::from_static(b"z"));
    }

    #[tokio::test]
    async fn rejects_escapes_and_foreign_uris() {
        let root = temp_root();
        let store = LocalStore::new(root.clone()).unwrap();
        for bad in ["../x", "/etc/passwd", "a//b", "a/./b", "", "a b"] {
            assert!(
                matches!(
                    store.put(bad, Bytes::new()).await,
                    Err(StoreError::InvalidKey(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            store.get("file:///etc/passwd").await,
            Err(StoreError::ForeignUri(_))
        ));
        let sneaky = format!("file://{}/../x", root.display());
        assert!(store.get(&sneaky).await.is_err());
        let missing = format!("file://{}/nope.bin", root.display());
        assert!(matches!(
            store.get(&missing).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            open("s3://bucket"),
            Err(StoreError::UnsupportedRoot(_))
        ));
    }

    #[test]
    fn hashes_content() {
        assert_eq!(
            content_hash(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
