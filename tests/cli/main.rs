//! The `latchkey` command, end to end through its binary (one test binary, a module per
//! concern):
//! - [`settings`]: the server's settings (flags, `LATCHKEY_*`, the README's table), which
//!   commands take them, and `latchkey token`;
//! - [`commands`]: `definitions`, `connections`, `lookup`, `import` against a real `latchkey serve`;
//! - [`client`]: the `latchkey-client` crate against the same;
//! - [`connect_link`]: `latchkey connect-link` against the same;
//! - [`doctor`]: `latchkey doctor` on the embedded backend and on moto.
//!
//! The shared harness (a `latchkey serve` on a free port, a finished command) is [`harness`];
//! moto and the random secret come from the `support` crate.

mod client;
mod commands;
mod connect_link;
mod doctor;
mod harness;
mod keys;
mod settings;
