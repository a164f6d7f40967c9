"""Webhook delivery: Standard Webhooks signing, an SSRF guard, and the outbox consumer.

`ssrf` checks URLs and the addresses they resolve to, `signing` builds the
Standard Webhooks headers, `transport` posts to one already-checked address,
`delivery` claims due outbox rows and records each attempt, and `runner` is
the dispatcher's thread pool around it.
"""
