"""agro-jax: AGRO-SQL (agentic group-relative optimization for Text-to-SQL) on JAX."""

__version__ = "0.1.0"
