//! RL and preference-learning math on libtorch tensors: reward-model losses, policy-gradient
//! losses and advantages (PPO/GAE, REINFORCE with baseline, RLOO, GRPO), KL estimators and
//! control, AdamW with serialisable state, learning-rate schedules, checkpoints.

pub mod checkpoint;
pub mod error;
pub mod optim;
pub mod schedule;

pub use error::{ensure_finite, is_bad_input, AlgoError, Result};
