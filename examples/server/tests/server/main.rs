//! vgen-server's integration tests, as one test binary (each binary links libtorch and weighs ~270 MB in a debug
//! build): servers on free ports in this process, and the built `vgen-server` program.

mod api;
mod binary;
mod cluster;
mod common;
mod progress;
mod webhook;
