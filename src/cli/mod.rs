//! Operator command-line surfaces: the HTTP client, the admin REPL and job submission.

pub mod client;
pub mod repl;
pub mod submit;
