"""Deep RL agents on Gymnasium: DQN, REINFORCE, A2C, PPO, analytic policy gradients."""
