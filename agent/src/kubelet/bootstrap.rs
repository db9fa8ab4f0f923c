//! Joining with a bootstrap token.
