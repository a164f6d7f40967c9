"""API keys: the stored keys and their webhook secrets (`store`), and the revocation
version every API process checks before trusting its key cache (`revocation`)."""
