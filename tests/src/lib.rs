//! Test kit for Switchyard's black-box tests: temporary configurations, the real
//! binaries started as child processes, and small real clients (plain HTTP/1.1
//! and rustls) that talk to them over loopback.

pub mod dns;
mod hellos;
mod http;
mod processes;
mod setup;
mod tls;
mod wrk;

pub use hellos::*;
pub use http::*;
pub use processes::*;
pub use setup::*;
pub use tls::*;
pub use wrk::*;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
