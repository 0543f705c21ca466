"""Generation: batched sampling with a KV cache and per-token log-probs (:mod:`.rollout`)."""
