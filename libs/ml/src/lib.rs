//! Petrel's model code, shared by the services that touch tabular data.
//!
//! Ingest validates uploaded CSV files against a declared [`Schema`] with [`parse_csv`]; the
//! trainer turns a validated [`Table`] into a [`ModelBundle`] with [`train_classifier`]; the
//! predictor decodes that bundle, builds a [`LoadedModel`] and answers JSON rows; the monitor reads
//! the training-split [`ReferenceProfile`] from the bundle as its drift reference.
//!
//! Training runs on burn (NdArray backend with autodiff). Inference deliberately does not: the
//! network is tiny, and a plain-Rust dense forward pass over weights copied out of burn is both
//! faster for single-row requests and trivially `Send + Sync`, which the predictor needs to share
//! one model across request tasks. A test checks that both forward passes agree.

mod bundle;
mod cnn;
mod compare;
mod csv_json;
mod dataset;
mod error;
mod gbt;
pub mod image;
mod infer;
mod model;
mod package;
mod penguins;
mod preprocess;
mod reviews;
mod rng;
mod schema;
mod scorer;
mod split;
pub mod text;
mod train;
mod tune;

pub use bundle::{
    BUNDLE_FORMAT_VERSION, MIN_BUNDLE_FORMAT_VERSION, ModelBundle, format_version_for,
};
pub use cnn::{Cnn, CnnWeights, ConvLayer};
pub use compare::{Holdout, HoldoutScore};
pub use csv_json::{JsonRows, csv_cell_to_json, csv_to_json_rows};
pub use dataset::{
    CsvRow, CsvRows, FeatureRow, ParseReport, RowError, RowRead, Table, Value, is_missing_token,
    parse_csv, row_from_json, row_from_json_str,
};
pub use error::MlError;
pub use gbt::Trees;
pub use infer::{LoadedModel, Prediction};
pub use model::{DenseLayer, Mlp, MlpWeights};
pub use package::{BUNDLE_FILE, MANIFEST_FILE, PackageManifest};
pub use penguins::{
    MAX_PENGUIN_ROWS, PENGUINS_CSV, PenguinSpec, generate_penguins, write_penguins,
};
pub use preprocess::{ColumnTransform, Preprocessor, TextEncoding};
pub use reviews::{MAX_REVIEW_ROWS, ReviewSpec, generate_reviews};
pub use schema::{Column, ColumnKind, DatasetPurpose, Schema};
pub use scorer::Scorer;
pub use split::stratified_split;
pub use train::{
    HeldOut, Metrics, ModelKind, ReferenceProfile, Scores, Stop, TrainConfig, train_classifier,
    train_classifier_until,
};
pub use tune::{
    CrossValidation, FoldScore, MAX_FOLDS, MAX_TRIALS, Spread, SweepGrid, SweepObserver,
    SweepOutcome, SweepSpec, Trial, cross_validate, stratified_folds, sweep,
};
