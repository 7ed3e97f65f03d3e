//! libtorch-free core shared by every stage: artifact schemas and typed rows, Parquet
//! reading and writing with lineage, atomic outputs, the tokenizer wrapper and chat
//! templates, and the command-line plumbing (global flags, logging, progress, exit codes).

pub mod adapter_meta;
pub mod atomic;
pub mod chat;
pub mod cli;
pub mod column;
pub mod compute;
pub mod config;
pub mod error;
pub mod hash;
pub mod lineage;
pub mod live;
pub mod metrics;
pub mod parquet_io;
pub mod parts;
pub mod paths;
pub mod progress;
pub mod records;
pub mod resources;
pub mod rng;
pub mod schema;
pub mod shard;
pub mod signals;
pub mod summary;
pub mod synthetic;
pub mod tensorboard;
pub mod tokenizer;

pub use error::{CoreError, Result};
