"""HTTP plumbing shared by the host and worker APIs: routes, auth, errors, OpenAPI, metrics."""
