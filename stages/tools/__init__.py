"""Tools around the six stages, not stages themselves: reports, diagnosis, exports, Slurm scripts, the toy
model's builder and the SmolLM2 converter. They may read any stage's tables; no stage imports them."""
