"""Bounds shared by the model configuration and the audio I/O (no imports, so saved model code can carry it)."""

# Sampling rates outside this range are header damage or a mistaken argument (a 1 Hz header turns 8 KB into an
# hour of audio at the model rate), not recordings.
MIN_SAMPLING_RATE = 4_000
MAX_SAMPLING_RATE = 768_000
