"""An OpenAI-compatible API (`/v1/models`, `/v1/completions`, `/v1/chat/completions`) in front of a
Triton server, where each prefix-tuned task is a model. Needs the `openai` extra (FastAPI,
uvicorn, Jinja2, prometheus-client)."""
