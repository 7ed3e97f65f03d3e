//! label-pairs: human preference labelling for the pipeline. `serve` shows a person a prompt
//! and two of its sampled responses (queued by reward-ensemble disagreement, [`queue`]) on
//! a local web page ([`serve`], [`http`]) and journals every answer to disk before it moves
//! on ([`journal`], [`board`]); `export` turns the journal into a preferences file with
//! per-labeller counts and Cohen's kappa ([`export`], [`agreement`]). Does not link
//! libtorch.

pub mod agreement;
pub mod args;
pub mod board;
pub mod error;
pub mod export;
pub mod http;
pub mod journal;
pub mod queue;
pub mod secret;
pub mod serve;
