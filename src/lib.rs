//! The parts of the netbackd binary that are plain data and logic, kept in a library so
//! that the fuzz targets (`fuzz/`) can reach them: the TOML configuration.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod config;
