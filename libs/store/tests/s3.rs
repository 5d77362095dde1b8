//! The S3 artifact store against a real S3-compatible server (SeaweedFS, SigV4 checked):
//! small and multipart objects round-trip, files stream both ways, keys cannot escape, wrong
//! credentials and missing objects are errors of their own, and an interrupted multipart upload
//! leaves no object behind.

use bytes::Bytes;
use petrel_store::{ArtifactStore, MULTIPART_THRESHOLD, S3Options, S3Store, StoreError};
use petrel_testkit::{S3_ACCESS_KEY, S3_SECRET_KEY, SeaweedFs};

fn options(server: &SeaweedFs, secret: &str) -> S3Options {
    S3Options {
        endpoint: Some(server.endpoint.clone()),
        force_path_style: true,
        region: Some("us-east-1".into()),
        credentials: Some((S3_ACCESS_KEY.into(), secret.into())),
    }
}

/// Deterministic bytes that are not all alike, so a swapped part would show.
fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_round_trip_through_a_real_s3_server() {
    let server = SeaweedFs::start(&["artifacts"]).await;
    let store = S3Store::connect(
        "s3://artifacts/petrel/test",
        &options(&server, S3_SECRET_KEY),
    )
    .await
    .unwrap();

    // A small object.
    let uri = store
        .put(
            "models/m/1/bundle.json",
            Bytes::from_static(b"{\"hello\":1}"),
        )
        .await
        .unwrap();
    assert_eq!(uri, "s3://artifacts/petrel/test/models/m/1/bundle.json");
    assert_eq!(&store.get(&uri).await.unwrap()[..], b"{\"hello\":1}");

    // A multipart object, from memory and from a file, read back whole and streamed to disk.
    let big = pattern(MULTIPART_THRESHOLD + 3 * 1024 * 1024 + 17);
    let uri = store
        .put("datasets/big.bin", Bytes::from(big.clone()))
        .await
        .unwrap();
    assert!(
        store.get(&uri).await.unwrap() == big,
        "multipart object differs"
    );
    let dir = std::env::temp_dir().join(format!("petrel-s3-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("source.bin");
    std::fs::write(&source, &big).unwrap();
    let uri = store
        .put_file("datasets/from-file.bin", &source)
        .await
        .unwrap();
    let target = dir.join("target.bin");
    let n = store.get_to_file(&uri, &target).await.unwrap();
    assert_eq!(n as usize, big.len());
    assert!(
        std::fs::read(&target).unwrap() == big,
        "streamed object differs"
    );

    // Streaming writes are hashed and bounded; reads stream; listing shows one level.
    let mut body: &[u8] = &big;
    let stored = store
        .put_stream("runs/r1/artifacts/model/weights.bin", &mut body, u64::MAX)
        .await
        .unwrap();
    assert_eq!(stored.size as usize, big.len());
    assert_eq!(
        stored.sha256,
        petrel_store::content_hash(&big).trim_start_matches("sha256:")
    );
    let mut small: &[u8] = b"{\"a\": 1}";
    store
        .put_stream("runs/r1/artifacts/params (1).json", &mut small, 1 << 20)
        .await
        .unwrap();
    let mut opened = store
        .open("runs/r1/artifacts/model/weights.bin")
        .await
        .unwrap();
    assert_eq!(opened.size as usize, big.len());
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut opened.reader, &mut back)
        .await
        .unwrap();
    assert!(back == big);
    let listed = store.list("runs/r1/artifacts").await.unwrap();
    let names: Vec<(&str, bool)> = listed.iter().map(|e| (e.name.as_str(), e.is_dir)).collect();
    assert_eq!(names, [("model", true), ("params (1).json", false)]);
    assert_eq!(listed[1].size, Some(8));
    let mut too_big: &[u8] = &big;
    assert!(matches!(
        store
            .put_stream("runs/r1/too-big.bin", &mut too_big, 1 << 20)
            .await,
        Err(StoreError::TooLarge { .. })
    ));
    assert!(matches!(
        store.open("runs/r1/too-big.bin").await,
        Err(StoreError::NotFound(_))
    ));

    // Keys and URIs cannot escape the store's prefix.
    for bad in ["../x", "/abs", "a//b", "a/./b"] {
        assert!(matches!(
            store.put(bad, Bytes::from_static(b"x")).await,
            Err(StoreError::InvalidKey(_))
        ));
    }
    for foreign in [
        "s3://other/petrel/test/models/m/1/bundle.json",
        "s3://artifacts/elsewhere/x",
        "s3://artifacts/petrel/test/../x",
        "file:///etc/passwd",
    ] {
        assert!(store.get(foreign).await.is_err(), "{foreign}");
    }
    assert!(matches!(
        store.get("s3://artifacts/petrel/test/missing.json").await,
        Err(StoreError::NotFound(_))
    ));

    // Wrong credentials fail with the store's error, not a panic or a silent empty read.
    let wrong = S3Store::connect("s3://artifacts/petrel/test", &options(&server, "wrong"))
        .await
        .unwrap();
    match wrong
        .get("s3://artifacts/petrel/test/models/m/1/bundle.json")
        .await
    {
        Err(StoreError::Remote { .. }) => {}
        other => panic!("expected a remote error, got {other:?}"),
    }
    assert!(matches!(
        wrong.put("x.json", Bytes::from_static(b"x")).await,
        Err(StoreError::Remote { .. })
    ));

    // An interrupted multipart upload (the source file vanishes mid-way) leaves no object.
    let vanishing = dir.join("vanishing.bin");
    std::fs::write(&vanishing, &big).unwrap();
    let file_len = big.len();
    let truncate = tokio::spawn({
        let v = vanishing.clone();
        async move {
            // Cut the file to a few bytes while parts are being read.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let f = std::fs::OpenOptions::new().write(true).open(&v).unwrap();
            f.set_len(10).unwrap();
        }
    });
    let r = store.put_file("datasets/interrupted.bin", &vanishing).await;
    truncate.await.unwrap();
    match r {
        // The upload either failed, or read only what the file still held: never a mix.
        Err(_) => assert!(matches!(
            store
                .get("s3://artifacts/petrel/test/datasets/interrupted.bin")
                .await,
            Err(StoreError::NotFound(_))
        )),
        Ok(uri) => {
            let got = store.get(&uri).await.unwrap();
            assert!(
                got.len() < file_len,
                "the whole file was read before it was cut"
            );
            assert!(big.starts_with(&got[..got.len().min(10)]));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
