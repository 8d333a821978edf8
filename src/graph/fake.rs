//! An in-memory [`super::Tenant`] for unit tests (placeholder: the apply work fills this in).
