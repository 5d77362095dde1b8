//! `petrel models package`: one registered model version as a gzip tarball that
//! `petrel-predictor serve` runs, SageMaker's `model.tar.gz` among them.
//!
//! The archive holds, at its root, the bundle exactly as the artifact store has it
//! ([`petrel_ml::BUNDLE_FILE`]) and a [`PackageManifest`] ([`petrel_ml::MANIFEST_FILE`]) naming
//! the model, the version, where the bundle came from and its hash, so the server answers with
//! the registry's name and version and can refuse a damaged package.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use petrel_api::registry::{ModelVersion, RegistryClient};
use petrel_ml::{BUNDLE_FILE, MANIFEST_FILE, ModelBundle, PackageManifest};

#[derive(clap::Args, Debug)]
pub struct PackageArgs {
    /// The version to package: `NAME@ALIAS` (e.g. `penguins@production`) or `NAME/VERSION`
    /// (e.g. `penguins/3`).
    pub model: String,
    /// Where to write the gzip tarball (e.g. `model.tar.gz`); replaced if it exists.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Base URL of the registry.
    #[arg(
        long,
        env = "PETREL_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub registry_url: String,
    /// The artifact store the registry's URIs point into: a directory path or `file://` URL.
    #[arg(
        long,
        env = "PETREL_ARTIFACT_ROOT",
        default_value = ".petrel/artifacts"
    )]
    pub artifact_root: String,
}

/// Which version a command line names.
#[derive(Debug, PartialEq, Eq)]
pub enum ModelRef {
    Alias { name: String, alias: String },
    Version { name: String, version: i32 },
}

impl ModelRef {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let usage = || {
            format!(
                "{s:?} names no model version; write NAME@ALIAS (penguins@production) or NAME/VERSION (penguins/3)"
            )
        };
        if let Some((name, alias)) = s.split_once('@') {
            if name.is_empty() || alias.is_empty() {
                bail!(usage());
            }
            return Ok(Self::Alias {
                name: name.to_owned(),
                alias: alias.to_owned(),
            });
        }
        if let Some((name, version)) = s.rsplit_once('/') {
            let version: i32 = version.parse().with_context(usage)?;
            if name.is_empty() || version < 1 {
                bail!(usage());
            }
            return Ok(Self::Version {
                name: name.to_owned(),
                version,
            });
        }
        bail!(usage())
    }
}

pub async fn run(a: PackageArgs) -> anyhow::Result<()> {
    let manifest = package(&a).await?;
    println!(
        "packaged {} version {} ({}) into {}",
        manifest.name,
        manifest.version,
        manifest.sha256,
        a.output.display()
    );
    Ok(())
}

/// Looks the version up, reads and checks its bundle, and writes the archive; returns the
/// manifest written.
pub async fn package(a: &PackageArgs) -> anyhow::Result<PackageManifest> {
    let registry = RegistryClient::new(&a.registry_url);
    let version: ModelVersion = match ModelRef::parse(&a.model)? {
        ModelRef::Alias { name, alias } => registry
            .get_alias(&name, &alias)
            .await
            .with_context(|| format!("cannot ask the registry where {name}@{alias} points"))?
            .with_context(|| format!("model {name:?} has no alias {alias:?}"))?,
        ModelRef::Version { name, version } => registry
            .get_version(&name, version)
            .await
            .with_context(|| format!("cannot get version {version} of {name} from the registry"))?,
    };
    let store = petrel_store::open(&a.artifact_root)?;
    let bytes = store.get(&version.artifact_uri).await.with_context(|| {
        format!(
            "cannot read the bundle of {} version {} (is --artifact-root the registry's store?)",
            version.model_name, version.version
        )
    })?;
    // Refuse to package what the server would refuse to load.
    let bundle = ModelBundle::from_bytes(&bytes).with_context(|| {
        format!(
            "{} is not a bundle this build can serve",
            version.artifact_uri
        )
    })?;
    let manifest = PackageManifest {
        name: version.model_name.clone(),
        version: version.version,
        artifact_uri: version.artifact_uri.clone(),
        sha256: petrel_store::content_hash(&bytes),
        bundle_format_version: bundle.format_version,
    };
    let mtime = u64::try_from(version.created_at.timestamp()).unwrap_or(0);
    write_archive(&a.output, &bytes, &manifest, mtime)?;
    Ok(manifest)
}

/// Writes the tarball next to `output` and renames it into place, so a reader never sees half
/// an archive. Entries carry the version's creation time, so packaging the same version twice
/// gives the same bytes.
fn write_archive(
    output: &Path,
    bundle: &[u8],
    manifest: &PackageManifest,
    mtime: u64,
) -> anyhow::Result<()> {
    let name = output
        .file_name()
        .with_context(|| format!("--output {} names no file", output.display()))?;
    let tmp = output.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let manifest_bytes = serde_json::to_vec_pretty(manifest)?;
    for (path, data) in [(BUNDLE_FILE, bundle), (MANIFEST_FILE, &manifest_bytes[..])] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, data)
            .with_context(|| format!("cannot write {path} into the archive"))?;
    }
    let mut file = tar
        .into_inner()
        .and_then(|gz| gz.finish())
        .context("cannot finish the archive")?;
    file.flush()?;
    file.sync_all()?;
    std::fs::rename(&tmp, output)
        .with_context(|| format!("cannot move the archive to {}", output.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_refs_are_alias_or_version() {
        assert_eq!(
            ModelRef::parse("penguins@production").unwrap(),
            ModelRef::Alias {
                name: "penguins".into(),
                alias: "production".into()
            }
        );
        assert_eq!(
            ModelRef::parse("penguins/3").unwrap(),
            ModelRef::Version {
                name: "penguins".into(),
                version: 3
            }
        );
        for bad in [
            "penguins",
            "@prod",
            "penguins@",
            "penguins/x",
            "penguins/0",
            "/2",
        ] {
            let err = ModelRef::parse(bad).unwrap_err().to_string();
            assert!(err.contains("NAME@ALIAS"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_archive_holds_the_bundle_and_manifest_at_its_root() {
        let dir = std::env::temp_dir().join(format!("petrel-package-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("model.tar.gz");
        let manifest = PackageManifest {
            name: "m".into(),
            version: 2,
            artifact_uri: "file:///x/bundle.json".into(),
            sha256: petrel_store::content_hash(b"{}"),
            bundle_format_version: 1,
        };
        write_archive(&out, b"{}", &manifest, 1_700_000_000).unwrap();
        let first = std::fs::read(&out).unwrap();
        write_archive(&out, b"{}", &manifest, 1_700_000_000).unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            first,
            "packaging is reproducible"
        );
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&first[..]));
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            seen.push((path, data));
        }
        assert_eq!(seen[0], (BUNDLE_FILE.to_owned(), b"{}".to_vec()));
        assert_eq!(seen[1].0, MANIFEST_FILE);
        let back: PackageManifest = serde_json::from_slice(&seen[1].1).unwrap();
        assert_eq!(back, manifest);
        assert!(!dir.join(".model.tar.gz.partial").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
