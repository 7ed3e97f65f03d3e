//! train-rm-lora: reward models on a frozen base, trained with a LoRA adapter plus a fully
//! trainable scalar score head (or, with --full, every weight on the same code path), from
//! preference pairs, ranking groups, ties and thumbs ratings. See `state` for the files an
//! adapter folder holds beside the PEFT ones.

pub mod args;
pub mod batching;
pub mod data;
pub mod loss;
pub mod quality;
pub mod reward_model;
pub mod run;
pub mod state;
pub mod train;
