"""Serving on Triton Inference Server: model repositories and an embedded CPU server.

- `repository.write_repository(converted, out, target="gpu"|"cpu", tokenizer_dir=..., streaming=...)`
  writes `fastertransformer` (FT backend on the GPU, or its python-backend twin running
  ftprefix.engine on the CPU; one tensor interface, `interface.py`), and with a tokenizer
  `preprocessing`, `postprocessing`, `ensemble`. The task table is published in the config
  parameter `prompt_learning_tasks` (JSON, see ftprefix.protocol) of `fastertransformer` and `ensemble`.
- `server.EmbeddedServer(converted, tokenizer_dir=None, grpc_port=0, http_port=0, streaming=False)`
  starts pytriton's real `tritonserver` binary on 127.0.0.1 (0 = a free port), waits for
  /v2/health/ready, and hot-reloads the models when the model's config.ini changes.

Both answer exactly as FasterTransformer does (docs/design.md, "What FT returns"): each row's own
input tokens, its generated tokens right after them, end_id up to the batch's full width;
`sequence_length` = padded width + generated tokens. Streaming (`streaming=True`, `ftprefix serve
--streaming`, `ftprefix triton-repo --streaming`) makes `fastertransformer` decoupled: one
response per generation step in that same layout (none for the step that ends generation), then a
final one flagged `triton_final_response`; errors arrive as one error response flagged final.
"""
