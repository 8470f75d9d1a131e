"""thermoledger's service side: the FastAPI app, report pages and the `thermoledger-server` CLI.

Importing this package imports nothing heavy; the web stack is loaded by the modules that need it.
"""
