"""The offline demo: a tiny GPT-NeoX and tokenizer built locally (toy.py) and two trained prefixes."""
