"""The pydantic models of requests and responses, and /openapi.json generated from them."""
