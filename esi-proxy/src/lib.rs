//! esi-proxy: an Edge Side Includes page-composition server.
//!
//! Modules in data-flow order:
//! - [`esi`]: the ESI 1.0 language, bytes → [`esi::Template`]; expressions and variables. Pure.
//! - [`lint`]: checks ESI markup for fragment teams (`esi-proxy lint`).

pub mod esi;
pub mod lint;
