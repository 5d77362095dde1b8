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
use tokio::io::{AsyncRead, AsyncReadExt};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "invalid artifact key {0:?}: use relative paths of letters, digits, spaces and \
         '-', '_', '.', '+', '=', ',', '@', '~', '(', ')', '!', separated by '/'"
    )]
    InvalidKey(String),
    #[error("artifact {key} is larger than the limit of {limit} bytes")]
    TooLarge { key: String, limit: u64 },
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
    /// Stores what `body` yields under `key` without holding it in memory, hashing it on the
    /// way, and fails with [`StoreError::TooLarge`] (leaving nothing behind) past `max_bytes`.
    /// Like [`ArtifactStore::put`], it replaces the key atomically.
    async fn put_stream(
        &self,
        key: &str,
        body: &mut (dyn AsyncRead + Send + Unpin),
        max_bytes: u64,
    ) -> Result<Stored, StoreError>;
    /// Opens the artifact under `key` for streaming: its size and a reader.
    async fn open(&self, key: &str) -> Result<Opened, StoreError>;
    /// The direct children of the directory `prefix` (`""` for the root), sorted by name;
    /// empty when `prefix` is a file or does not exist.
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError>;
}

/// What [`ArtifactStore::put_stream`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub uri: String,
    pub size: u64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

/// An artifact opened by [`ArtifactStore::open`].
pub struct Opened {
    pub size: u64,
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").field("size", &self.size).finish()
    }
}

/// One child of a listed directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
    /// Bytes, for files.
    pub size: Option<u64>,
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

/// A key is a relative path of letters (any script), digits, spaces and `- _ . + = , @ ~ ( ) !`,
/// separated by `/`, with no empty, `.` or `..` segment: it can never name anything outside
/// its store.
pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && key.chars().all(|c| {
            c.is_alphanumeric()
                || matches!(
                    c,
                    '-' | '_' | '.' | '/' | ' ' | '+' | '=' | ',' | '@' | '~' | '(' | ')' | '!'
                )
        });
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
        commit_file(&tmp, &path).await?;
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
        commit_file(&tmp, &path).await?;
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

    async fn put_stream(
        &self,
        key: &str,
        body: &mut (dyn AsyncRead + Send + Unpin),
        max_bytes: u64,
    ) -> Result<Stored, StoreError> {
        Self::check_key(key)?;
        let path = self.root.join(key);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        }
        let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::now_v7().simple()));
        let written = copy_hashing(body, &tmp, key, max_bytes).await;
        let (size, sha256) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        commit_file(&tmp, &path).await?;
        Ok(Stored {
            uri: format!("file://{}", path.display()),
            size,
            sha256,
        })
    }

    async fn open(&self, key: &str) -> Result<Opened, StoreError> {
        Self::check_key(key)?;
        let path = self.root.join(key);
        let not_found = || StoreError::NotFound(key.to_owned());
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(io(&path)(e)),
        };
        let meta = file.metadata().await.map_err(io(&path))?;
        if !meta.is_file() {
            return Err(not_found());
        }
        Ok(Opened {
            size: meta.len(),
            reader: Box::new(file),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let dir = if prefix.is_empty() {
            self.root.clone()
        } else {
            Self::check_key(prefix)?;
            self.root.join(prefix)
        };
        let mut read = match tokio::fs::read_dir(&dir).await {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut entries = Vec::new();
        while let Some(child) = read.next_entry().await.map_err(io(&dir))? {
            let Ok(name) = child.file_name().into_string() else {
                continue;
            };
            // Files being written (`put`, `put_stream`) are not artifacts yet.
            if name.contains(".tmp-") || Self::check_key(&name).is_err() {
                continue;
            }
            let meta = child.metadata().await.map_err(io(&child.path()))?;
            entries.push(Entry {
                name,
                is_dir: meta.is_dir(),
                size: meta.is_file().then_some(meta.len()),
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }
}

/// Makes the file written at `tmp` durable under `path`: its data is synced, it is renamed
/// over `path`, and the directory is synced so the rename survives a crash too. A caller that
/// answers 200 after this has the artifact on disk, not in the page cache. On failure `tmp` is
/// removed.
async fn commit_file(tmp: &Path, path: &Path) -> Result<(), StoreError> {
    let result = async {
        tokio::fs::File::open(tmp)
            .await
            .map_err(io(tmp))?
            .sync_all()
            .await
            .map_err(io(tmp))?;
        tokio::fs::rename(tmp, path).await.map_err(io(path))?;
        if let Some(dir) = path.parent() {
            tokio::fs::File::open(dir)
                .await
                .map_err(io(dir))?
                .sync_all()
                .await
                .map_err(io(dir))?;
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(tmp).await;
    }
    result
}

/// The next chunk of an upload body: `cap` bytes, fewer only at its end, none once it is done
/// (a body arrives in frames of a few KiB, so each chunk is filled before it is handed on).
/// The bytes are counted into `size`, and past `max_bytes` the upload is refused.
pub(crate) async fn next_body_chunk(
    body: &mut (dyn AsyncRead + Send + Unpin),
    key: &str,
    cap: usize,
    size: &mut u64,
    max_bytes: u64,
) -> Result<Bytes, StoreError> {
    let mut buf = bytes::BytesMut::with_capacity(cap);
    while buf.len() < cap {
        let n = body
            .read_buf(&mut buf)
            .await
            .map_err(|source| StoreError::Io {
                path: format!("{key} (request body)"),
                source,
            })?;
        if n == 0 {
            break;
        }
    }
    *size += buf.len() as u64;
    if *size > max_bytes {
        return Err(StoreError::TooLarge {
            key: key.to_owned(),
            limit: max_bytes,
        });
    }
    Ok(buf.freeze())
}

/// How much of an upload is written before its data is synced again (see [`copy_hashing`]).
const SYNC_EVERY: usize = 16 * 1024 * 1024;

/// Copies `body` into a new file at `path` in chunks, returning its size and hex SHA-256.
///
/// The three steps run side by side: this task reads the body into chunks, one blocking thread
/// writes each chunk to the file (with `std::fs`, so a chunk is not copied again into an async
/// file's buffer) and another hashes it. Hashing alone took 37% of the registry's time in an
/// upload when it ran between the read and the write. The writer also syncs the file's data
/// every [`SYNC_EVERY`] bytes, so the disk writes back while the body is still arriving and
/// the sync before the answer only has the tail left (a single sync at the end made a 256 MB
/// upload wait about 160 ms for the whole file's writeback).
async fn copy_hashing(
    body: &mut (dyn AsyncRead + Send + Unpin),
    path: &Path,
    key: &str,
    max_bytes: u64,
) -> Result<(u64, String), StoreError> {
    const CHUNK: usize = 1024 * 1024;
    // Chunks in flight per queue: enough for the reader to go on while the writer syncs.
    const QUEUED: usize = 8;
    let file = tokio::fs::File::create(path)
        .await
        .map_err(io(path))?
        .into_std()
        .await;
    let (to_hash, mut hash_queue) = tokio::sync::mpsc::channel::<Bytes>(QUEUED);
    let (to_write, mut write_queue) = tokio::sync::mpsc::channel::<Bytes>(QUEUED);
    let hasher = tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        while let Some(chunk) = hash_queue.blocking_recv() {
            hasher.update(&chunk);
        }
        hex::encode(hasher.finalize())
    });
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut file = file;
        let mut unsynced = 0;
        while let Some(chunk) = write_queue.blocking_recv() {
            file.write_all(&chunk)?;
            unsynced += chunk.len();
            if unsynced >= SYNC_EVERY {
                file.sync_data()?;
                unsynced = 0;
            }
        }
        file.flush()
    });
    let mut size = 0u64;
    let copied: Result<(), StoreError> = async {
        loop {
            let chunk = next_body_chunk(body, key, CHUNK, &mut size, max_bytes).await?;
            if chunk.is_empty() {
                return Ok(());
            }
            let short = chunk.len() < CHUNK;
            // Either queue closes only when its thread has stopped: the writer on an I/O
            // error, which the join below reports.
            let _ = to_hash.send(chunk.clone()).await;
            if to_write.send(chunk).await.is_err() {
                return Ok(());
            }
            if short {
                return Ok(());
            }
        }
    }
    .await;
    drop((to_hash, to_write));
    let joined = |e: tokio::task::JoinError| StoreError::Io {
        path: format!("{key} (upload task)"),
        source: std::io::Error::other(e.to_string()),
    };
    let written = writer.await.map_err(joined)?;
    let sha256 = hasher.await.map_err(joined)?;
    copied?;
    written.map_err(io(path))?;
    Ok((size, sha256))
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
        for bad in [
            "../x",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "",
            "a%20b",
            "a\\b",
            "a\nb",
        ] {
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

    #[tokio::test]
    async fn streams_in_and_out_and_lists() {
        let root = temp_root();
        let store = LocalStore::new(root.clone()).unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut body: &[u8] = &data;
        let stored = store
            .put_stream("runs/a b/model.bin", &mut body, 2_000_000)
            .await
            .unwrap();
        assert_eq!(stored.size, 1_000_000);
        assert_eq!(format!("sha256:{}", stored.sha256), content_hash(&data));
        assert_eq!(
            store.get(&stored.uri).await.unwrap(),
            Bytes::from(data.clone())
        );
        let mut opened = store.open("runs/a b/model.bin").await.unwrap();
        assert_eq!(opened.size, 1_000_000);
        let mut back = Vec::new();
        opened.reader.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, data);

        // Too large: refused, and nothing is left behind.
        let mut body: &[u8] = &data;
        assert!(matches!(
            store.put_stream("runs/big.bin", &mut body, 10).await,
            Err(StoreError::TooLarge { .. })
        ));
        assert!(matches!(
            store.open("runs/big.bin").await,
            Err(StoreError::NotFound(_))
        ));

        let top = store.list("runs").await.unwrap();
        assert_eq!(
            top,
            vec![Entry {
                name: "a b".into(),
                is_dir: true,
                size: None
            }]
        );
        let inner = store.list("runs/a b").await.unwrap();
        assert_eq!(inner[0].size, Some(1_000_000));
        assert!(store.list("runs/a b/model.bin").await.unwrap().is_empty());
        assert!(store.list("nope").await.unwrap().is_empty());
        assert!(matches!(
            store.open("runs").await,
            Err(StoreError::NotFound(_))
        ));
        assert!(store.list("../x").await.is_err());
    }

    #[test]
    fn hashes_content() {
        assert_eq!(
            content_hash(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
