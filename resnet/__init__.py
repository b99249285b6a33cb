"""ResNets for CIFAR-10 (He et al. 2016, section 4.2) and their training library.

Importing the package sets TensorFlow's environment before TensorFlow loads, for
train.py, eval.py and every `python -m resnet.<program>` (a variable the user set wins).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # Keep TF's warnings, drop its info lines.
# TF turns oneDNN on by itself only on CPUs with AVX-512 VNNI/BF16 or AMX. On the AVX2
# CPUs we measured, it made training about twice as fast (docs/speed.md).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
