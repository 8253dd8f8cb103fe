"""Enhance one file in three lines: python examples/enhance.py NOISY.wav ENHANCED.wav [MODEL]"""

import sys

from hybrid_mpsenet import HybridMPSENetForSpeechEnhancement

model = HybridMPSENetForSpeechEnhancement.from_pretrained(*sys.argv[3:4]).eval()  # bundled default without MODEL
print("written:", model.enhance_file(sys.argv[1], sys.argv[2]))
