"""pavlov: reinforcement learning from the textbook MDP to RL for language models."""

__version__ = "0.1.0"
