"""What runs inside a vLLM process (its own Python, with vLLM installed): the OpenAI server
with a states route, and the worker extension that captures the states. Nothing here imports
semdistill or vLLM at module level; the main venv only passes these files' paths."""
