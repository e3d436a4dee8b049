"""The request path without Ray: the walk over tiers (``walk.py``), one tier's part in a request
(``attempt.py``), the tier-side verdict (``decide.py``), the walk's request/answer types
(``types.py``, ``request.py``), errors, the cost receipt and the circuit breaker.

May import: ``serving.deferral`` and the standard library, numpy. Never Ray, grpc, FastAPI or torch (a
unit test imports this package in a fresh interpreter and checks ``sys.modules``); tiers are reached
through the small ``TierClient`` protocol that ``serving.serve.tier_client`` implements over Serve.
"""
