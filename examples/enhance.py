"""Enhance one file in three lines: python examples/enhance.py MODEL NOISY.wav ENHANCED.wav"""

import sys

from hybrid_mpsenet import HybridMPSENetForSpeechEnhancement

model_id, noisy, enhanced = sys.argv[1:4]
model = HybridMPSENetForSpeechEnhancement.from_pretrained(model_id).eval()
print("written:", model.enhance_file(noisy, enhanced))
