"""One decoding step's token choice with FasterTransformer's rules (per row of a batch).

Order and formulas follow NVIDIA/FasterTransformer:
- layers/DynamicDecodeLayer.cc: bad words are banned (logit = -inf) before sampling; after it
  the stop-words and length criteria mark rows finished.
- layers/sampling_layers/BaseSamplingLayer.cc: temperature (logit * 1/(T + 1e-6), applied to the
  whole batch unless every row has T == 1), then the repetition penalty, only when step > 1, then
  the minimum length: while a row has generated fewer than min_length tokens its end_id logit is
  -FLT_MAX (kernels/sampling_penalty_kernels.cu batchApplyMinLengthPenalty; FT's decoding logits
  are fp32 for fp16 models too).
- kernels/sampling_penalty_kernels.cu: multiplicative penalty on every distinct token of the row
  so far (input without padding + generated): logit < 0 ? logit * p : logit / p.
- layers/sampling_layers/TopKSamplingLayer.cu: top_k == 0 and top_p == 0 means greedy (k = 1);
  k > 0 with p == 0 means p = 1; k is clipped to 1024 (protocol.TOP_K_MAX) and p to [0, 1];
  k == 0, p > 0 is top-p.
- kernels/sampling_topk_kernels.cu: among the k best, draw u * p * (sum of their probabilities)
  and walk down the sorted list; log probs come from the softmax over the whole vocabulary:
  cum_log_probs += log P(token), output_log_probs = log P(token) - log P(top-k set).
- kernels/sampling_topp_kernels.cu: sort all probabilities, draw u * p, walk down;
  cum_log_probs and output_log_probs both get log P(token).
Random numbers come from one torch.Generator per row seeded with random_seed, so a request is
reproducible on this engine (FT's curand streams cannot be reproduced off the GPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ftprefix import protocol
from ftprefix.engine.api import GenerationRequest

FLT_LOWEST = float(torch.finfo(torch.float32).min)  # -FLT_MAX, FT's mask for a float logit


class Sampler:
    def __init__(
        self,
        requests: Sequence[GenerationRequest],
        vocab_size: int,
        want_log_probs: bool,
        end_ids: Sequence[int] = (),
    ) -> None:
        b = len(requests)
        self.min_lengths = [int(r.min_length) for r in requests]
        self.end_ids = list(end_ids)
        if any(self.min_lengths) and len(self.end_ids) != b:
            raise ValueError("min_length needs each row's end_id")
        self.vocab_size = vocab_size
        self.want_log_probs = want_log_probs
        ks, ps = [], []
        for r in requests:
            k, p = int(r.top_k), float(r.top_p)
            if k == 0 and p == 0.0:
                k = 1
            if k > 0 and p == 0.0:
                p = 1.0
            # k above the vocabulary: every token is a candidate, as in FT's kernel (whose extra
            # candidates have no probability)
            ks.append(min(k, protocol.TOP_K_MAX, vocab_size))
            ps.append(min(max(p, 0.0), 1.0))
        self.top_k = ks
        self.top_p = ps
        self.greedy = all(k == 1 for k in ks)
        temps = [float(r.temperature) for r in requests]
        self.inv_temperature = (
            (1.0 / (torch.tensor(temps, dtype=torch.float32) + 1e-6))[:, None]
            if any(t != 1.0 for t in temps)
            else None
        )
        penalties = [float(r.repetition_penalty) for r in requests]
        self.penalty = (
            torch.tensor(penalties, dtype=torch.float32)[:, None]
            if any(p != 1.0 for p in penalties)
            else None
        )
        self.seen = torch.zeros((b, vocab_size), dtype=torch.bool)
        for row, r in enumerate(requests):
            self.seen[row, torch.tensor(r.input_ids, dtype=torch.long)] = True
        self.generators = [
            None if k == 1 else torch.Generator().manual_seed(int(r.random_seed))
            for k, r in zip(ks, requests, strict=True)
        ]
        self.bad_words = [[list(w) for w in r.bad_words if w] for r in requests]

    def observe(self, tokens: torch.Tensor) -> None:
        """Record the tokens just chosen (for the repetition penalty)."""
        self.seen[torch.arange(len(tokens)), tokens] = True

    def _ban_bad_words(self, logits: torch.Tensor, histories: Sequence[Sequence[int]]) -> None:
        for row, words in enumerate(self.bad_words):
            history = histories[row]
            for word in words:
                *context, banned = word
                # validate() keeps ids inside the vocabulary
                matches = not context or list(history[-len(context) :]) == context
                if matches and len(history) >= len(context):
                    logits[row, banned] = float("-inf")

    def choose(
        self, logits: torch.Tensor, histories: Sequence[Sequence[int]], step: int, generated: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """logits [B, V] float32 -> (tokens [B], log P(token) [B], FT output_log_probs [B]).

        `histories` are each row's tokens so far (input + generated); `step` is FT's step index
        (max input length + tokens generated so far), which gates the repetition penalty;
        `generated` the tokens each running row has generated so far (for min_length).
        """
        logits = logits.clone()
        self._ban_bad_words(logits, histories)
        if self.inv_temperature is not None:
            logits = logits * self.inv_temperature
        if step > 1 and self.penalty is not None:
            penalised = torch.where(logits < 0, logits * self.penalty, logits / self.penalty)
            logits = torch.where(self.seen, penalised, logits)
        for row, min_length in enumerate(self.min_lengths):
            if generated < min_length:
                logits[row, self.end_ids[row]] = FLT_LOWEST
        b = logits.shape[0]
        log_probs = torch.log_softmax(logits, dim=-1) if self.want_log_probs else None
        if self.greedy:
            tokens = logits.argmax(dim=-1)
            token_lp = log_probs.gather(1, tokens[:, None])[:, 0] if log_probs is not None else torch.zeros(b)
            # top-1 "sampling": the token is certain given its set, so FT reports log 1 = 0
            return tokens, token_lp, torch.zeros(b)
        tokens = torch.empty(b, dtype=torch.long)
        token_lp = torch.zeros(b)
        output_lp = torch.zeros(b)
        probs = torch.softmax(logits, dim=-1)
        for row in range(b):
            k, p = self.top_k[row], self.top_p[row]
            if k == 1:
                tokens[row] = int(logits[row].argmax())
                candidates_mass = probs[row, tokens[row]]
            else:
                if k > 0:
                    cand_probs, cand_ids = torch.topk(probs[row], k)
                else:
                    cand_probs, cand_ids = torch.sort(probs[row], descending=True)
                mass = cand_probs.sum()
                generator = self.generators[row]
                u = torch.rand((), generator=generator)
                threshold = u * p * (mass if k > 0 else 1.0)
                index = int(torch.searchsorted(torch.cumsum(cand_probs, 0), threshold))
                index = min(index, cand_ids.numel() - 1)
                tokens[row] = cand_ids[index]
                candidates_mass = mass
            if log_probs is not None:
                token_lp[row] = log_probs[row, tokens[row]]
                # top-k rows report the probability within the k best; top-p rows the plain one
                output_lp[row] = token_lp[row] - torch.log(candidates_mass) if k > 0 else token_lp[row]
        return tokens, token_lp, output_lp
