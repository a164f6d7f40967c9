"""One module of routes (a blueprint) per resource of /v1, and the unauthenticated ones."""
