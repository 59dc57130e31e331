"""Live resource stats of the running servers: sampled, kept a day, served (docs/spec.md)."""
