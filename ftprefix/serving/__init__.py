"""Serving on Triton Inference Server: model repositories and an embedded CPU server.

- `repository.write_repository(converted, out, target="gpu"|"cpu", tokenizer_dir=..., streaming=...)`
  writes `fastertransformer` (FT backend on the GPU, or its python-backend twin running
  ftprefix.engine on the CPU; one tensor interface, `interface.py`), and with a tokenizer
  `preprocessing`, `postprocessing`, `ensemble`. The task table is published in the config
  parameter `prompt_learning_tasks` (JSON, see ftprefix.protocol) of `fastertransformer` and `ensemble`.
- `server.EmbeddedServer(converted, tokenizer_dir=None, grpc_port=0, http_port=0, streaming=False)`
  starts pytriton's real `tritonserver` binary on 127.0.0.1 (0 = a free port), waits for
  /v2/health/ready, and hot-reloads the models when the model's config.ini changes.

Streaming (`streaming=True`, `ftprefix serve --streaming`, `ftprefix triton-repo --streaming`): the
`fastertransformer` model is decoupled (`model_transaction_policy { decoupled: true }`) and behaves
like the FT backend (fastertransformer_backend src/libfastertransformer.cc, `streaming_callback`):
use the gRPC stream API; for each request, every generation step sends one response holding the
FULL `output_ids` [batch, 1, max_input_len + max_output_len] (the padded input as sent, the tokens
generated so far, end_id after them) and `sequence_length` = max_input_len + tokens so far; after
the last step one more response carries the complete result and is flagged final
(`triton_final_response` true in the gRPC response parameters). So a client takes the new tokens
of a step as output_ids[b, 0, previous_length:sequence_length[b]]. Log probs are 0 in streamed
responses. Errors arrive as one error response flagged final.
"""
