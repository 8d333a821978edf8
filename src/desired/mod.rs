//! The desired side: `users.yaml` ([`spec`]), where it is read from ([`source`]: a git branch or
//! a plain file) and what a change between two revisions grants and revokes ([`diff`]).
//! Nothing here talks to Graph or the portal.

pub mod diff;
pub mod source;
pub mod spec;
