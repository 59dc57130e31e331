"""Resource limits of exec servers (docs/spec.md, "Limits"): cgroups made by the worker."""
