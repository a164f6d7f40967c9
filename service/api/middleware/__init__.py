"""What runs around every route: keys, rate limits, body size, URL guards, metrics."""
