//! RL and preference-learning math on libtorch tensors: reward-model losses, policy-gradient
//! losses and advantages (PPO/GAE, REINFORCE with baseline, RLOO, GRPO), KL estimators and
//! control, AdamW with serialisable state, learning-rate schedules, checkpoints.
