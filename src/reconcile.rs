//! observe → plan → apply, once (placeholder).
