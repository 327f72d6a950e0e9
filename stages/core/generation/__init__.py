"""Generation backends, models, prompts, the sampling policy, teacher forcing."""
