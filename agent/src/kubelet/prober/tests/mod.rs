//! Probes and hooks against servers on 127.0.0.1 and a fake runtime on a unix socket,
//! and the workers' state machine on a fake clock.

mod fakes;
mod hooks;
mod machine;
mod network;
