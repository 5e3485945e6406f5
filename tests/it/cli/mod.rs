//! The admin REPL and CLI client: against a small stand-in of the API (for exact output), and the
//! REPL on a pseudo-terminal through the real binary.

mod fake;
mod pty;
mod real;
mod script;
mod submit;
