"""The HTTP API, metrics, web page and webhooks (`pvebalance api`)."""
