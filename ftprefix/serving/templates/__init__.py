"""model.py sources copied into generated Triton model repositories (not imported by ftprefix itself).

`ftprefix_site.py` goes next to each model.py; the others become `<model>/1/model.py`. The
preprocessing and postprocessing models import ftprefix's core package (ftprefix.text,
ftprefix.words, ftprefix.ft_rows, ftprefix.serving.text_models; no torch, no transformers, no
tritonclient): the CPU server finds it in its virtualenv, and the GPU image installs it
(ftprefix/assets/image/Dockerfile.gpu, the image a deployment builds).
"""
