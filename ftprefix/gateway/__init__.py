"""An OpenAI-compatible API (`/v1/models`, `/v1/completions`) in front of a Triton server, where
each prefix-tuned task is a model. Needs the `openai` extra (FastAPI, uvicorn, sse-starlette)."""
