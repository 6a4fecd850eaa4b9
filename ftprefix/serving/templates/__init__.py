"""model.py sources copied into generated Triton model repositories (not imported by ftprefix itself).

`ftprefix_site.py` goes next to each model.py; the others become `<model>/1/model.py`. The
preprocessing and postprocessing models depend only on numpy and transformers, so the same files
run in the FasterTransformer backend's GPU image, where ftprefix is not installed.
"""
