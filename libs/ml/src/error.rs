//! The one error type of this crate.

/// Everything that can go wrong in schema checks, parsing, training and bundle handling.
///
/// Messages are written for API clients: they name the column, line or setting at fault and
/// never leak internal types, so services can pass them through unchanged.
#[derive(Debug, thiserror::Error)]
pub enum MlError {
    /// The schema itself is inconsistent, or a file does not provide a column the schema needs.
    #[error("schema error: {0}")]
    Schema(String),
    /// The input is not readable as CSV at all (empty, not UTF-8 text, broken header).
    #[error("CSV error: {0}")]
    Csv(String),
    /// A single row of a file is unusable; `line` is 1-based with the header on line 1.
    #[error("line {line}: {message}")]
    Row {
        /// 1-based line number in the file.
        line: u64,
        /// What is wrong with the row.
        message: String,
    },
    /// A value does not fit its column (wrong type, not a finite number).
    #[error("invalid value for column '{column}': {message}")]
    InvalidValue {
        /// The column the value was given for.
        column: String,
        /// What is wrong with the value.
        message: String,
    },
    /// A row names a column the schema does not have, which is usually a typo.
    #[error("unknown column '{0}'")]
    UnknownColumn(String),
    /// A row's features are not a JSON object (an array, a number, broken JSON).
    #[error("the features must be an object of column name to value")]
    NotAnObject,
    /// A setting is outside its range (a generator's rows, shift or noise); the message names
    /// the setting.
    #[error("{0}")]
    Setting(String),
    /// Training cannot start or did not converge (bad configuration, too little data, ...).
    #[error("training error: {0}")]
    Training(String),
    /// Training stopped because its [`Stop`](crate::Stop) was set (a cancelled job).
    #[error("training was cancelled")]
    Cancelled,
    /// A model bundle cannot be encoded, decoded or turned into a model.
    #[error("model bundle error: {0}")]
    Bundle(String),
    /// Row `row` (0-based, of the rows given to
    /// [`LoadedModel::try_predict`](crate::LoadedModel::try_predict)) holds finite values so far
    /// from the training data that the model's arithmetic overflows, so it has no meaningful
    /// prediction. The message leaves the row out, so callers can name it their own way.
    #[error("feature values are outside the range this model can score")]
    OutOfRange {
        /// The 0-based position of the row at fault.
        row: usize,
    },
}
