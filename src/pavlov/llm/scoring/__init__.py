"""Scoring: log-probabilities of responses under a policy or reference (:mod:`.logprobs`), reward
functions for online RL (:mod:`.rewards`), and held-out evaluation of a policy
(:mod:`.policy_eval`)."""
