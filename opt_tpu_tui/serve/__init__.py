"""``opt-tpu-tui serve``: one resident model behind an OpenAI-compatible HTTP API (command.py, app.py, engine.py)."""
