"""Shared core of dreambuild: typed errors, safe archive handling, diffusers layout checks,
the Cog runtime helpers and the tiny-model fixture generator."""
