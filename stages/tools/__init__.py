"""Tools around the six stages, not stages themselves: reports, diagnosis, exports, Slurm scripts, the toy
model's builder, the SmolLM2 converter and the demo's experiment driver (demo/). They may read any stage's
tables; no stage imports them."""
