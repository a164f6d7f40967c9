"""Entry points: the `janus-service` command and the processes it starts.

They sit above every other layer and only assemble it: the CLI, the API under
gunicorn, the dispatcher (webhook delivery + sweeper), the dev launcher, the
migration runner and the batch HTTP client.
"""
