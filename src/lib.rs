//! diffstream: the engine around the `dataflows` crate. Data enters in [`sources`], is
//! decoded by [`codec`], computed by the dataflows, and leaves through [`sinks`];
//! [`runtime`] drives timely's workers and logical time; [`config`] and [`cli`] wire it.

pub mod bench;
pub mod cli;
pub mod codec;
pub mod commands;
pub mod config;
pub mod demo;
pub mod http;
pub mod inspect;
pub mod reference;
pub mod runtime;
pub mod sinks;
pub mod sources;
pub mod status;
