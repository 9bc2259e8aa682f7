//! The splitter's peek parsers as a library, so fuzz targets, benchmarks and
//! tests can call them; the `splitter` binary (`src/main.rs`) is built on them.
//!
//! The splitter links no TLS stack and no Pingora, and reads no private key.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod peek;
