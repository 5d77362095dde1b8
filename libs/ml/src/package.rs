//! The layout of a packaged model: what `petrel models package` writes and what the predictor's
//! container mode (`petrel-predictor serve`) reads, so both sides name the files the same way.
//!
//! A package is a directory (shipped as a gzip tarball, as SageMaker's `model.tar.gz`) holding
//! the [`ModelBundle`](crate::ModelBundle) as [`BUNDLE_FILE`] and a [`PackageManifest`] as
//! [`MANIFEST_FILE`], both at its root.

use serde::{Deserialize, Serialize};

/// The bundle's file name inside a package.
pub const BUNDLE_FILE: &str = "bundle.json";

/// The manifest's file name inside a package.
pub const MANIFEST_FILE: &str = "petrel-model.json";

/// Where a packaged bundle came from, so a server started from the package alone answers with
/// the registry's model name and version, and can check it holds the bytes the registry named.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackageManifest {
    /// The registered model's name.
    pub name: String,
    /// The registered version the package holds.
    pub version: i32,
    /// The version's artifact URI in the artifact store the package was made from.
    pub artifact_uri: String,
    /// `sha256:<hex>` of [`BUNDLE_FILE`]'s bytes.
    pub sha256: String,
    /// The bundle's `format_version`, so a reader can refuse a package before decoding it.
    pub bundle_format_version: u32,
}
