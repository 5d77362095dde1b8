//! Where a file to ingest comes from. Every source ends up as a file on local disk (a file
//! under the data directory is read where it lies; an upload, an S3 object, inline text or a
//! generator's rows are spooled to a temporary file), hashed on the way, so that validation,
//! Parquet conversion and storage all stream from disk and memory stays flat whatever the size.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tempfile::TempPath;

/// Parquet files start (and end) with these four bytes.
const PARQUET_MAGIC: &[u8; 4] = b"PAR1";
/// Chunks in flight between the network and the spooling thread.
const SPOOL_QUEUE: usize = 16;
/// Read size when hashing a file in place.
const HASH_CHUNK: usize = 1 << 20;

/// What a file holds, told by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
}

impl Format {
    fn sniff(head: &[u8]) -> Self {
        if head.starts_with(PARQUET_MAGIC) {
            Self::Parquet
        } else {
            Self::Csv
        }
    }

    /// The extension the stored original gets.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Parquet => "parquet",
        }
    }
}

/// A file on local disk, with its digest; a spooled one is deleted when this is dropped.
#[derive(Debug)]
pub struct SourceFile {
    path: PathBuf,
    /// `sha256:<hex>` of the bytes.
    pub content_hash: String,
    pub size: u64,
    pub format: Format,
    _spooled: Option<TempPath>,
}

/// Why spooling a stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the file is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// The sender's stream failed (a client that went away, a broken multipart body).
    #[error("reading the file failed: {0}")]
    Body(String),
    #[error("cannot spool the file to local disk: {0}")]
    Io(#[from] std::io::Error),
}

/// Hashes what passes through and remembers the first bytes.
struct Digesting {
    hasher: Sha256,
    size: u64,
    head: Vec<u8>,
}

impl Digesting {
    fn new() -> Self {
        Self {
            hasher: Sha256::new(),
            size: 0,
            head: Vec::with_capacity(PARQUET_MAGIC.len()),
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        let room = PARQUET_MAGIC.len() - self.head.len();
        self.head.extend_from_slice(&chunk[..room.min(chunk.len())]);
    }

    fn finish(self, path: PathBuf, spooled: Option<TempPath>) -> SourceFile {
        SourceFile {
            path,
            content_hash: format!("sha256:{}", hex::encode(self.hasher.finalize())),
            size: self.size,
            format: Format::sniff(&self.head),
            _spooled: spooled,
        }
    }
}

impl SourceFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file that stays where it is (under the data directory), hashed on the blocking pool.
    pub async fn in_place(path: PathBuf) -> std::io::Result<Self> {
        tokio::task::spawn_blocking(move || {
            let mut file = std::fs::File::open(&path)?;
            let mut digest = Digesting::new();
            let mut buf = vec![0; HASH_CHUNK];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                digest.update(&buf[..n]);
            }
            Ok(digest.finish(path, None))
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Small content already in memory (inline text, a generator's rows), written to `dir`.
    pub async fn from_bytes(dir: &Path, bytes: Bytes) -> std::io::Result<Self> {
        let once = futures::stream::iter([Ok::<_, std::io::Error>(bytes)]);
        Self::spool(dir, once, u64::MAX).await.map_err(|e| match e {
            SpoolError::Io(e) => e,
            other => std::io::Error::other(other.to_string()),
        })
    }

    /// Streams `body` into a temporary file under `dir`, hashing it on the way, and stops
    /// (leaving nothing behind) past `limit` bytes. The writing and hashing run on the blocking
    /// pool; at most [`SPOOL_QUEUE`] chunks wait in memory.
    pub async fn spool<S, E>(dir: &Path, body: S, limit: u64) -> Result<Self, SpoolError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(SPOOL_QUEUE);
        let dir = dir.to_owned();
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<SourceFile> {
            let (file, path) = spool_file(&dir)?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            let mut digest = Digesting::new();
            while let Some(chunk) = rx.blocking_recv() {
                digest.update(&chunk);
                out.write_all(&chunk)?;
            }
            // No fsync: the spool is scratch; the store makes the stored copy durable.
            out.flush()?;
            Ok(digest.finish(path.to_path_buf(), Some(path)))
        });
        let mut body = std::pin::pin!(body);
        let mut total = 0u64;
        let mut failure = None;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    failure = Some(SpoolError::Body(e.to_string()));
                    break;
                }
            };
            total += chunk.len() as u64;
            if total > limit {
                failure = Some(SpoolError::TooLarge { limit });
                break;
            }
            if tx.send(chunk).await.is_err() {
                // The writer stopped: its error is the answer.
                break;
            }
        }
        drop(tx);
        let written = writer.await.map_err(std::io::Error::other)?;
        match failure {
            // Dropping the written file deletes it.
            Some(e) => Err(e),
            None => Ok(written?),
        }
    }
}

/// A new file in the spool directory `dir` (created if need be), deleted when its path is
/// dropped.
pub fn spool_file(dir: &Path) -> std::io::Result<(std::fs::File, TempPath)> {
    std::fs::create_dir_all(dir)?;
    let file = tempfile::Builder::new()
        .prefix("petrel-ingest-")
        .tempfile_in(dir)?;
    Ok(file.into_parts())
}

/// Why a Parquet file could not become CSV: the sender's problem, reported as such.
#[derive(Debug, thiserror::Error)]
pub enum ParquetError {
    #[error("cannot read the Parquet file: {0}")]
    Unreadable(String),
    #[error(
        "column {0:?} is nested (a group, list or map); Petrel reads flat Parquet tables of \
         numbers, strings, booleans, dates and timestamps"
    )]
    Nested(String),
    #[error("column {0:?} holds binary values that are not UTF-8 text")]
    Binary(String),
    #[error("cannot write the converted rows: {0}")]
    Io(String),
}

/// Converts a flat Parquet table into CSV with a header of its column names (nulls become
/// empty fields, which the schema reads as missing), reading it a page at a time. Returns
/// the rows converted.
pub fn parquet_to_csv(path: &Path, out: impl Write) -> Result<u64, ParquetError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    let unreadable = |e: parquet::errors::ParquetError| ParquetError::Unreadable(e.to_string());
    let file = std::fs::File::open(path).map_err(|e| ParquetError::Io(e.to_string()))?;
    let reader = SerializedFileReader::new(file).map_err(unreadable)?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let root = schema.root_schema();
    let mut csv = csv::WriterBuilder::new().from_writer(out);
    let io = |e: csv::Error| ParquetError::Io(e.to_string());
    let names: Vec<&str> = root.get_fields().iter().map(|f| f.name()).collect();
    if let Some(nested) = root.get_fields().iter().find(|f| f.is_group()) {
        return Err(ParquetError::Nested(nested.name().to_owned()));
    }
    csv.write_record(&names).map_err(io)?;
    let mut record = csv::ByteRecord::new();
    let mut text = String::new();
    let mut rows = 0u64;
    for row in reader.get_row_iter(None).map_err(unreadable)? {
        let row = row.map_err(unreadable)?;
        record.clear();
        for (name, field) in row.get_column_iter() {
            use std::fmt::Write as _;
            text.clear();
            match field {
                Field::Null => {}
                Field::Str(s) => text.push_str(s),
                Field::Bytes(b) => text.push_str(
                    std::str::from_utf8(b.data())
                        .map_err(|_| ParquetError::Binary(name.clone()))?,
                ),
                Field::Float(v) => write!(text, "{v}").expect("formatting to a String"),
                Field::Double(v) => write!(text, "{v}").expect("formatting to a String"),
                Field::Group(_) | Field::ListInternal(_) | Field::MapInternal(_) => {
                    return Err(ParquetError::Nested(name.clone()));
                }
                // Integers, booleans, decimals, dates and timestamps print as their text.
                other => write!(text, "{other}").expect("formatting to a String"),
            }
            record.push_field(text.as_bytes());
        }
        csv.write_byte_record(&record).map_err(io)?;
        rows += 1;
    }
    csv.flush().map_err(|e| ParquetError::Io(e.to_string()))?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spooling_hashes_and_sniffs_and_stops_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = ["species,island\n", "Adelie,", "Biscoe\n"];
        let body = futures::stream::iter(
            chunks.map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c.as_bytes()))),
        );
        let file = SourceFile::spool(dir.path(), body, 1 << 20).await.unwrap();
        let whole = chunks.concat();
        assert_eq!(file.size, whole.len() as u64);
        assert_eq!(
            file.content_hash,
            petrel_store::content_hash(whole.as_bytes())
        );
        assert_eq!(file.format, Format::Csv);
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), whole);
        let kept = file.path().to_owned();
        drop(file);
        assert!(!kept.exists(), "a spooled file goes when it is dropped");

        let big = futures::stream::iter(
            (0..10).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1000]))),
        );
        let err = SourceFile::spool(dir.path(), big, 5_000).await.unwrap_err();
        assert!(
            matches!(err, SpoolError::TooLarge { limit: 5_000 }),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing is left behind"
        );

        let broken =
            futures::stream::iter([Ok(Bytes::from_static(b"PAR1")), Err("the client went away")]);
        let err = SourceFile::spool(dir.path(), broken, 1 << 20)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("went away"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let parquet = SourceFile::from_bytes(dir.path(), Bytes::from_static(b"PAR1...."))
            .await
            .unwrap();
        assert_eq!(parquet.format, Format::Parquet);
        let in_place = SourceFile::in_place(parquet.path().to_owned())
            .await
            .unwrap();
        assert_eq!(in_place.content_hash, parquet.content_hash);
        assert_eq!(in_place.format, Format::Parquet);
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name)
    }

    #[test]
    fn parquet_written_by_pyarrow_becomes_the_csv_it_came_from() {
        // The fixtures are data/penguins.csv through pyarrow (scripts/parquet-fixtures.py),
        // with `NA` as null.
        let original = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/penguins.csv"),
        )
        .unwrap();
        let expected: String = original
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line
                    .split(',')
                    .map(|f| if f == "NA" { "" } else { f })
                    .collect();
                fields.join(",") + "\n"
            })
            .collect();
        for name in ["penguins-snappy.parquet", "penguins-zstd.parquet"] {
            let mut out = Vec::new();
            let rows = parquet_to_csv(&fixture(name), &mut out).unwrap();
            assert_eq!(rows, 344, "{name}");
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{name}");
        }
    }

    #[test]
    fn parquet_that_cannot_be_a_table_says_why() {
        let err = parquet_to_csv(&fixture("nested.parquet"), Vec::new()).unwrap_err();
        assert!(
            matches!(&err, ParquetError::Nested(c) if c == "bill"),
            "{err}"
        );
        assert!(err.to_string().contains("flat Parquet tables"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let broken = dir.path().join("broken.parquet");
        std::fs::write(&broken, b"PAR1 this is not really parquet").unwrap();
        let err = parquet_to_csv(&broken, Vec::new()).unwrap_err();
        assert!(matches!(err, ParquetError::Unreadable(_)), "{err}");
    }
}
