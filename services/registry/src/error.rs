use axum::response::{IntoResponse, Response};
use petrel_runtime::http::ApiError;

/// Everything a registry request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("database error")]
    Db(#[from] sqlx::Error),
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Error::NotFound(m) => ApiError::not_found(m),
            Error::Conflict(m) => ApiError::conflict(m),
            Error::Invalid(m) => ApiError::invalid(m),
            Error::Db(e) if petrel_db::is_unique_violation(&e) => {
                ApiError::conflict_retry("a concurrent request created the same resource; retry")
            }
            Error::Db(e) => ApiError::internal(e),
        }
        .into_response()
    }
}

pub type Result<T> = std::result::Result<T, Error>;
