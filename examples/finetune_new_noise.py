"""Fine-tune a model on a new kind of noise: clean speech mixed with your noise recordings on the fly.

python examples/finetune_new_noise.py MODEL CLEAN_DIR NOISE_DIR OUTPUT_DIR
"""

import sys

from hybrid_mpsenet.training import TrainingArguments, train

model, clean_dir, noise_dir, output_dir = sys.argv[1:5]
args = TrainingArguments(
    output_dir=output_dir,
    model=model,
    clean_dirs=[clean_dir],
    noise_dirs=[noise_dir],
    snr_low=-5.0,
    snr_high=15.0,
    learning_rate=1e-4,
    max_steps=2000,
    eval_every=200,
    save_every=200,
)
print("best model:", train(args))
