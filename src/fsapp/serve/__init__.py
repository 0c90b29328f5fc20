"""`fstore serve`: the engine process (single writer) + gunicorn workers that
read the online tables from shared memory and forward writes to the engine
over a Unix socket. See docs/architecture.md, "Serving"."""
