"""HTTP API: FastAPI app factory, routes, response schemas."""
