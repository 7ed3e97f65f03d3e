//! Per-sample seeds and row ids. A sample's random stream depends only on the global seed,
//! the iteration, its prompt's id and its index among the prompt's K samples, never on its
//! position in a batch, a shard or the prompts file: that is what makes sharded runs and
//! runs with another batch size reproduce each other row for row.

use rlhf_core::hash::content_id;

/// The policy id written when no adapter is used.
pub const BASE_POLICY_ID: &str = "base";

/// The seed of one sample's random stream (63 bits, so it is also a valid signed 64-bit
/// integer for tools that read `seed` as BIGINT).
pub fn sample_seed(global_seed: u64, iteration: i32, prompt_id: &str, sample_index: usize) -> u64 {
    let id = content_id(&[
        "sample-rollouts/seed/v1",
        &global_seed.to_string(),
        &iteration.to_string(),
        prompt_id,
        &sample_index.to_string(),
    ]);
    // content_id is 16 hex characters: 64 bits.
    u64::from_str_radix(&id, 16).unwrap_or(0) >> 1
}

/// The stable id of a rollout: hash of prompt id, iteration, sample index and policy id
/// (the `rollout_id` column contract).
pub fn rollout_id(prompt_id: &str, iteration: i32, sample_index: usize, policy_id: &str) -> String {
    content_id(&[
        prompt_id,
        &iteration.to_string(),
        &sample_index.to_string(),
        policy_id,
    ])
}

/// The policy id of an adapter folder: its content id (weights and configuration, never
/// paths: see `rlhf_core::adapter_meta::content_id`).
pub fn policy_id(adapter: Option<&std::path::Path>) -> anyhow::Result<String> {
    match adapter {
        None => Ok(BASE_POLICY_ID.to_string()),
        Some(dir) => Ok(rlhf_core::adapter_meta::content_id(dir)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_depend_on_every_part_and_nothing_else() {
        let s = sample_seed(7, 1, "p1", 0);
        assert_eq!(s, sample_seed(7, 1, "p1", 0));
        assert_ne!(s, sample_seed(8, 1, "p1", 0));
        assert_ne!(s, sample_seed(7, 2, "p1", 0));
        assert_ne!(s, sample_seed(7, 1, "p2", 0));
        assert_ne!(s, sample_seed(7, 1, "p1", 1));
        for i in 0..100 {
            assert!(sample_seed(i, 0, "x", 3) <= i64::MAX as u64);
        }
        // Boundary-aware: "1" + "11" differs from "11" + "1".
        assert_ne!(sample_seed(1, 11, "p", 0), sample_seed(11, 1, "p", 0));
    }

    #[test]
    fn rollout_ids_are_stable_and_distinct() {
        let a = rollout_id("p1", 1, 0, "base");
        assert_eq!(a.len(), 16);
        assert_eq!(a, rollout_id("p1", 1, 0, "base"));
        assert_ne!(a, rollout_id("p1", 1, 1, "base"));
        assert_ne!(a, rollout_id("p1", 2, 0, "base"));
        assert_ne!(a, rollout_id("p1", 1, 0, "0123456789abcdef"));
    }

    #[test]
    fn policy_id_hashes_the_adapter_folder() {
        assert_eq!(policy_id(None).unwrap(), "base");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("adapter_config.json"), "{}").unwrap();
        let a = policy_id(Some(dir.path())).unwrap();
        assert_eq!(a.len(), 16);
        std::fs::write(dir.path().join("adapter_config.json"), "{\"r\": 8}").unwrap();
        assert_ne!(a, policy_id(Some(dir.path())).unwrap());
    }
}
