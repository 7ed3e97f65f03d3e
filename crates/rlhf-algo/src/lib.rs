//! RL and preference-learning math on libtorch tensors: reward-model losses, policy-gradient
//! losses and advantages (PPO/GAE, REINFORCE with baseline, RLOO, GRPO), KL estimators and
//! control, AdamW with serialisable state, learning-rate schedules, checkpoints, and the
//! resumable step loop every trainer runs.

pub mod advantages;
pub mod checkpoint;
pub mod error;
pub mod kl;
pub mod kl_control;
pub mod masked;
pub mod optim;
pub mod optim_args;
pub mod policy_loss;
pub mod rm_loss;
pub mod schedule;
pub mod step_loop;
pub mod trainer_args;

pub use error::{ensure_finite, is_bad_input, AlgoError, Result};
