"""The Quart-Trio HTTP frontend: app factory, routes, request schemas, JSON errors, auth, OpenAPI."""
