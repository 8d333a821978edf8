//! Executing a plan (placeholder: the apply work fills this in).
