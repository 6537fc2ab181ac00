"""Recipes wire envs, data, learners and the runtime together; they own no maths."""
