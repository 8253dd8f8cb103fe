"""Bounds shared by the model configuration and the audio I/O (no imports, so saved model code can carry it)."""

# Sampling rates outside this range are header damage or a mistaken argument (a 1 Hz header turns 8 KB into an
# hour of audio at the model rate), not recordings.
MIN_SAMPLING_RATE = 4_000
MAX_SAMPLING_RATE = 768_000

# Upper bounds of the architecture settings, checked before anything is allocated: far above every preset (64
# channels, 4 blocks), far below what a typo asks for (`dense_channel: 100000` would need about 240 GB).
MAX_DENSE_CHANNEL = 1024
MAX_BLOCKS_PER_GROUP = 64
MAX_FFN_HIDDEN_SIZE = 8192
MAX_N_FFT = 8192
MAX_MAMBA_D_STATE = 1024
MAX_MAMBA_D_CONV = 64
MAX_MAMBA_EXPAND = 16
MAX_ATTENTION_WINDOW = 65536
