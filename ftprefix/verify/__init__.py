"""`ftprefix verify`: compare what FT would compute with Hugging Face given the original checkpoints.

`verify_files` checks a converted directory on CPU; it sits above the converter (checkpoint
readers) and the engine, never inside them.
"""

from ftprefix.verify.files import BASE_NAME, FileCheck, FilesReport, Fp16Check, verify_files

__all__ = ["BASE_NAME", "FileCheck", "FilesReport", "Fp16Check", "verify_files"]
