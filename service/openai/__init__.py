"""The OpenAI-compatible face: OpenAI's wire format under /openai/v1, on top of the same
jobs, queue, workers and storage as /v1 (docs/API.md, "OpenAI-compatible face").

The modules here import no Flask: the dispatcher (which finishes OpenAI batches nobody
reads) imports them as well as the API, so they sit below both:

    render         finished jobs -> images/chat.completion/error bodies, image_size
    records        the face's own rows (files, OpenAI batches), its storage names
    batch_output   `finalize`: a finished batch's output and error files
    batch_tick     the dispatcher's tick: expiry and finalization with nobody reading
    shapes         request and response models for /openapi.json
    openapi_paths  the /openai/v1 paths of /openapi.json

The Flask routes are in `routes/`, above service.api.
"""
