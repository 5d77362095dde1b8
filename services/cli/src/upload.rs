//! Streams a file to ingest's `POST /v1/datasets/upload`, a megabyte at a time, with progress
//! on a terminal.

use std::io::IsTerminal as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use petrel_api::ApiClient;
use petrel_api::ingest::{IngestResponse, UploadSpec};
use reqwest::multipart::{Form, Part};

/// An upload may take as long as the file needs; this bounds a stalled one.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Uploads `path` as the dataset `spec` describes.
pub async fn dataset(
    client: &ApiClient,
    spec: &UploadSpec,
    path: &Path,
) -> anyhow::Result<IngestResponse> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    let size = file
        .metadata()
        .await
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let sent = Arc::new(AtomicU64::new(0));
    let progress = (std::io::stderr().is_terminal() && size > 64 << 20).then(|| {
        let sent = sent.clone();
        let name = path.display().to_string();
        tokio::spawn(async move {
            loop {
                let n = sent.load(Ordering::Relaxed);
                eprint!(
                    "\ruploading {name}: {:>3}% ({} of {} MiB)",
                    n * 100 / size.max(1),
                    n >> 20,
                    size >> 20
                );
                if n >= size {
                    eprintln!("; validating");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    });
    let counted = sent.clone();
    let chunks = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).inspect(move |c| {
        if let Ok(c) = c {
            counted.fetch_add(c.len() as u64, Ordering::Relaxed);
        }
    });
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "upload".to_owned());
    let form = Form::new()
        .part(
            "spec",
            Part::text(serde_json::to_string(spec)?).mime_str("application/json")?,
        )
        .part(
            "file",
            Part::stream_with_length(reqwest::Body::wrap_stream(chunks), size).file_name(file_name),
        );
    let answer = client
        .post_multipart("/v1/datasets/upload", form, UPLOAD_TIMEOUT)
        .await;
    if let Some(p) = progress {
        p.abort();
    }
    Ok(answer?)
}
