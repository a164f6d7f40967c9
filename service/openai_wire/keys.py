"""Names the OpenAI face stores things under, shared by the API that writes them and the
dispatcher that reads or writes them when it finishes a batch."""

from __future__ import annotations

# Job metadata: an image request's `response_format` when it is not the default `url`
# (a batch line's images are rendered long after its request was read).
RESPONSE_FORMAT_KEY = "openai_response_format"


def storage_key(file_id: str) -> str:
    """Where an OpenAI file's bytes live in object storage (uploads and result files)."""
    return f"openai/files/{file_id}"
