//! Probes and hooks against servers on 127.0.0.1 and a fake runtime on a unix socket.

mod fakes;
mod hooks;
mod network;
