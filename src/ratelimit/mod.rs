//! Provider call quotas. `policy` holds the decisions (sliding windows per operation,
//! cool-downs after a 429, plan limits); it never reads a clock or does I/O.

pub mod policy;
