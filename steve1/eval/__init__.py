"""Evaluation: offline metrics, the rollouts' programmatic metrics (the rollouts play in ``steve1.play``),
goals from prompts, data drift reports."""
