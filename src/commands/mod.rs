//! One module per command group. Each entry point reads its arguments, calls the library crate
//! that does the work, and reports what it did on stderr (results on stdout).

pub mod batch;
pub mod cluster;
pub mod demo;
pub mod keys;
pub mod lake;
pub mod models;
pub mod rules;
pub mod run;
pub mod serve;
pub mod speed;
