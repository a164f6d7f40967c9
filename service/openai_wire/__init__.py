"""OpenAI's wire format without Flask, for the two processes that write it.

The API (service/api/openai, the routes under /openai/v1) and the dispatcher (which
finishes OpenAI batches nobody reads) both render finished jobs into OpenAI's bodies
and write a finished batch's result files, so that code lives here, below both, and
the dispatcher imports no Flask and no route:

    render        finished jobs -> images/chat.completion/error bodies, image_size
    keys          storage keys of OpenAI files, the job metadata key of response_format
    batch_output  `finalize`: a finished batch's output and error files
    batch_tick    the dispatcher's tick: expiry and finalization with nobody reading
"""
