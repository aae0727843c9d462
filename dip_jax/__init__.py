"""dip_jax: Deep Image Prior in JAX."""
