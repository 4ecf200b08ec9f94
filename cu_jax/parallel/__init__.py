"""Device mesh, sharding helpers, multi-host start-up and orbax checkpointing."""
