"""ftprefix: one GPT-NeoX base model, many prefix-tuned tasks, served by FasterTransformer on Triton."""

__version__ = "0.1.0"
