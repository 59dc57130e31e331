"""The `manman` command: services (host | worker | up) and the client verbs."""
