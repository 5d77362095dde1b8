//! Artifacts as objects in S3 or an S3-compatible server (SeaweedFS, MinIO, Ceph), under
//! `s3://bucket/prefix`. Credentials come from the standard AWS chain (environment, profile,
//! instance or task role); `endpoint` and `force_path_style` reach servers that are not AWS.
//!
//! Objects over [`MULTIPART_THRESHOLD`] are written in parts of [`PART_SIZE`], read from disk
//! a part at a time, so a 1 GB artifact never sits in memory; a failed multipart upload is
//! aborted, so no half-written object ever appears under the key.

use std::path::Path;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::{ArtifactStore, Entry, Opened, StoreError, Stored, check_key};
use sha2::{Digest, Sha256};

/// Objects at least this large are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 16 << 20;
/// Size of each part (S3 needs at least 5 MiB for all but the last).
pub const PART_SIZE: usize = 8 << 20;

/// How to reach the S3 server.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// An endpoint URL for S3-compatible servers (`http://127.0.0.1:8333`); AWS when unset.
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket/key` rather than `bucket.endpoint/key`, as most
    /// S3-compatible servers need.
    pub force_path_style: bool,
    /// The region; from the AWS chain (`AWS_REGION`, profile) when unset, else `us-east-1`.
    pub region: Option<String>,
    /// Static access key id and secret, replacing the AWS chain (tests, and servers that
    /// hand out keys of their own).
    pub credentials: Option<(String, String)>,
}

/// An S3 bucket and key prefix.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Empty, or ends with `/`.
    prefix: String,
}

fn s3_error(uri: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Remote {
        uri: uri.to_owned(),
        source: Box::new(e),
    }
}

impl S3Store {
    /// Connects to `s3://bucket/prefix` (nothing is sent until the first call).
    pub async fn connect(root: &str, options: &S3Options) -> Result<Self, StoreError> {
        let rest = root
            .strip_prefix("s3://")
            .ok_or_else(|| StoreError::UnsupportedRoot(root.to_owned()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::UnsupportedRoot(root.to_owned()));
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            check_key(prefix)?;
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &options.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let mut config =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(options.force_path_style);
        if shared.region().is_none() {
            config = config.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(url) = &options.endpoint {
            config = config.endpoint_url(url);
        }
        if let Some((id, secret)) = &options.credentials {
            config = config.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id, secret, None, None, "petrel",
            ));
        }
        Ok(Self {
            client: Client::from_conf(config.build()),
            bucket: bucket.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    /// `GetObject`, with a missing key as [`StoreError::NotFound`] naming `missing`.
    async fn get_object(
        &self,
        object: &str,
        missing: &str,
        uri: &str,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StoreError> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(se) if se.is_no_such_key() => StoreError::NotFound(missing.to_owned()),
                _ => s3_error(uri, e),
            })
    }

    fn uri(&self, object: &str) -> String {
        format!("s3://{}/{object}", self.bucket)
    }

    /// The object key of a URI this store wrote.
    fn object_of(&self, uri: &str) -> Result<String, StoreError> {
        let rest = uri
            .strip_prefix("s3://")
            .and_then(|r| r.strip_prefix(self.bucket.as_str()))
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| StoreError::ForeignUri(uri.to_owned()))?;
        let key = rest
            .strip_prefix(self.prefix.as_str())
            .ok_or_else(|| StoreError::ForeignUri(uri.to_owned()))?;
        check_key(key)?;
        Ok(rest.to_owned())
    }

    async fn put_parts(&self, object: &str, mut next: Parts<'_>) -> Result<(), StoreError> {
        let first = next.next_part().await?.unwrap_or_default();
        self.put_parts_with_first(object, first, &mut next).await
    }

    /// A multipart upload of `first` and then whatever `next` yields; aborted on any failure.
    async fn put_parts_with_first(
        &self,
        object: &str,
        first: Bytes,
        next: &mut Parts<'_>,
    ) -> Result<(), StoreError> {
        let uri = self.uri(object);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await
            .map_err(|e| s3_error(&uri, e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StoreError::Protocol(format!("no upload id for {uri}")))?
            .to_owned();
        let result: Result<Vec<CompletedPart>, StoreError> = async {
            let mut parts = Vec::new();
            let mut number = 1;
            let mut chunk = Some(first);
            while let Some(body) = chunk.take() {
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(object)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| s3_error(&uri, e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_owned))
                        .build(),
                );
                number += 1;
                chunk = next.next_part().await?;
            }
            Ok(parts)
        }
        .await;
        let parts = match result {
            Ok(p) => p,
            Err(e) => {
                // Leave nothing behind: an aborted upload never becomes an object.
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(object)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                return Err(e);
            }
        };
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_error(&uri, e))?;
        Ok(())
    }
}

/// Where the parts of a multipart upload come from.
enum Parts<'a> {
    Memory(Bytes),
    /// A request body, hashed and bounded on the way.
    Stream {
        body: &'a mut (dyn tokio::io::AsyncRead + Send + Unpin),
        key: &'a str,
        max_bytes: u64,
        size: u64,
        hasher: Sha256,
        done: bool,
    },
    File {
        file: tokio::fs::File,
        path: &'a Path,
        done: bool,
    },
}

impl Parts<'_> {
    async fn next_part(&mut self) -> Result<Option<Bytes>, StoreError> {
        match self {
            Parts::Memory(bytes) => {
                if bytes.is_empty() {
                    return Ok(None);
                }
                let n = PART_SIZE.min(bytes.len());
                Ok(Some(bytes.split_to(n)))
            }
            Parts::Stream {
                body,
                key,
                max_bytes,
                size,
                hasher,
                done,
            } => {
                if *done {
                    return Ok(None);
                }
                let buf =
                    crate::next_body_chunk(&mut **body, key, PART_SIZE, size, *max_bytes).await?;
                *done = buf.len() < PART_SIZE;
                hasher.update(&buf);
                Ok((!buf.is_empty()).then_some(buf))
            }
            Parts::File { file, path, done } => {
                if *done {
                    return Ok(None);
                }
                let mut buf = Vec::with_capacity(PART_SIZE);
                while buf.len() < PART_SIZE {
                    let n = (&mut *file)
                        .take((PART_SIZE - buf.len()) as u64)
                        .read_to_end(&mut buf)
                        .await
                        .map_err(crate::io(path))?;
                    if n == 0 {
                        *done = true;
                        break;
                    }
                }
                Ok((!buf.is_empty()).then(|| Bytes::from(buf)))
            }
        }
    }
}

#[async_trait]
impl ArtifactStore for S3Store {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<String, StoreError> {
        check_key(key)?;
        let object = format!("{}{key}", self.prefix);
        let uri = self.uri(&object);
        if bytes.len() >= MULTIPART_THRESHOLD {
            self.put_parts(&object, Parts::Memory(bytes)).await?;
        } else {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&object)
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map_err(|e| s3_error(&uri, e))?;
        }
        Ok(uri)
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<String, StoreError> {
        check_key(key)?;
        let object = format!("{}{key}", self.prefix);
        let uri = self.uri(&object);
        let len = tokio::fs::metadata(path)
            .await
            .map_err(crate::io(path))?
            .len();
        if (len as usize) < MULTIPART_THRESHOLD {
            let body = ByteStream::from_path(path)
                .await
                .map_err(|e| s3_error(&uri, e))?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&object)
                .body(body)
                .send()
                .await
                .map_err(|e| s3_error(&uri, e))?;
        } else {
            let file = tokio::fs::File::open(path).await.map_err(crate::io(path))?;
            self.put_parts(
                &object,
                Parts::File {
                    file,
                    path,
                    done: false,
                },
            )
            .await?;
        }
        Ok(uri)
    }

    async fn get(&self, uri: &str) -> Result<Bytes, StoreError> {
        let object = self.object_of(uri)?;
        let out = self.get_object(&object, uri, uri).await?;
        let data = out.body.collect().await.map_err(|e| s3_error(uri, e))?;
        Ok(data.into_bytes())
    }

    async fn put_stream(
        &self,
        key: &str,
        body: &mut (dyn tokio::io::AsyncRead + Send + Unpin),
        max_bytes: u64,
    ) -> Result<Stored, StoreError> {
        check_key(key)?;
        let object = format!("{}{key}", self.prefix);
        let uri = self.uri(&object);
        let mut parts = Parts::Stream {
            body,
            key,
            max_bytes,
            size: 0,
            hasher: Sha256::new(),
            done: false,
        };
        // A body that fits one part goes up in one request; a longer one in parts.
        let first = parts.next_part().await?.unwrap_or_default();
        let single = matches!(&parts, Parts::Stream { done: true, .. });
        if single {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&object)
                .body(ByteStream::from(first))
                .send()
                .await
                .map_err(|e| s3_error(&uri, e))?;
        } else {
            self.put_parts_with_first(&object, first, &mut parts)
                .await?;
        }
        let Parts::Stream { size, hasher, .. } = parts else {
            unreachable!("built as a stream above")
        };
        Ok(Stored {
            uri,
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    async fn open(&self, key: &str) -> Result<Opened, StoreError> {
        check_key(key)?;
        let object = format!("{}{key}", self.prefix);
        let uri = self.uri(&object);
        let out = self.get_object(&object, key, &uri).await?;
        let size = out.content_length().unwrap_or(0).max(0) as u64;
        Ok(Opened {
            size,
            reader: Box::new(out.body.into_async_read()),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        if !prefix.is_empty() {
            check_key(prefix)?;
        }
        let dir = if prefix.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{}/", self.prefix, prefix.trim_end_matches('/'))
        };
        let uri = self.uri(&dir);
        let mut entries = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&dir)
                .delimiter("/")
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| s3_error(&uri, e))?;
            for p in out.common_prefixes() {
                if let Some(name) = p
                    .prefix()
                    .and_then(|p| p.strip_prefix(dir.as_str()))
                    .map(|n| n.trim_end_matches('/'))
                    .filter(|n| !n.is_empty())
                {
                    entries.push(Entry {
                        name: name.to_owned(),
                        is_dir: true,
                        size: None,
                    });
                }
            }
            for o in out.contents() {
                if let Some(name) = o
                    .key()
                    .and_then(|k| k.strip_prefix(dir.as_str()))
                    .filter(|n| !n.is_empty() && !n.contains('/'))
                {
                    entries.push(Entry {
                        name: name.to_owned(),
                        is_dir: false,
                        size: o.size().map(|s| s.max(0) as u64),
                    });
                }
            }
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    async fn get_to_file(&self, uri: &str, path: &Path) -> Result<u64, StoreError> {
        let object = self.object_of(uri)?;
        let out = self.get_object(&object, uri, uri).await?;
        let mut reader = out.body.into_async_read();
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(crate::io(path))?;
        let n = tokio::io::copy(&mut reader, &mut file)
            .await
            .map_err(crate::io(path))?;
        Ok(n)
    }
}
