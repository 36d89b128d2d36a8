"""Old home of streaming quantization, which is a PTQ driver: this name is lowbit.ptq.streaming itself."""

import sys

from lowbit.ptq import streaming

sys.modules[__name__] = streaming
