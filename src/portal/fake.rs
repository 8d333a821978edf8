//! An in-memory [`super::Portal`] for unit tests (placeholder: the apply work fills this in).
