//! Why a model was refused at load, or a call refused at predict time.

/// A model that this crate will not run. `Unsupported` means the file may be fine but cannot be
/// evaluated *exactly* as its reference runtime does (fall through to another runtime);
/// `Invalid` means the file itself is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("cannot decode the model: {0}")]
    Decode(String),
    #[error("invalid tree ensemble: {0}")]
    Invalid(String),
    #[error("not supported by the native tree evaluator: {0}")]
    Unsupported(String),
}

impl LoadError {
    pub(crate) fn invalid(why: impl Into<String>) -> LoadError {
        LoadError::Invalid(why.into())
    }

    pub(crate) fn unsupported(why: impl Into<String>) -> LoadError {
        LoadError::Unsupported(why.into())
    }

    /// Whether another runtime may still be able to run this model.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, LoadError::Unsupported(_))
    }
}

/// A request that does not fit the model's signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PredictError {
    #[error("input '{name}' expects {expected} values ({rows} rows of {features}), got {got}")]
    Shape {
        name: String,
        rows: usize,
        features: usize,
        expected: usize,
        got: usize,
    },
    #[error("input '{name}' expects {expected}, got {got}")]
    DType {
        name: String,
        expected: &'static str,
        got: &'static str,
    },
}
