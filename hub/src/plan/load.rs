//! Loading.

/// Bad input.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// x
    #[error("x")]
    X,
}
