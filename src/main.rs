//! The `guestops` command line (placeholder).

fn main() {}
