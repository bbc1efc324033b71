//! Black-box and cross-crate tests for talm live in `tests/tests/`; this library is empty.
