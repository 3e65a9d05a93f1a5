#!/bin/sh
# The VAE prior of the Aristoff-Bangerth benchmark (issue 18's last item, docs/inverse.md):
# the Darcy VAEs' recipe (experiments/train_inverse_vaes.sh) unchanged -- 16 latent dims, MLP
# 3x400, Gaussian likelihood with sigma^2 = 1/2, 15 epochs, batch 64, Adam 2e-4, seed 0 -- on
# the 20,000 training draws of aristoff-bangerth-prior (8x8 images of ln theta, iid N(4, 2^2)).
# AUTOVAE: the command to call (default autovae; e.g. "python -m autovae" from a checkout).
set -e
OUT=${1:-runs/inverse}
AUTOVAE=${AUTOVAE:-autovae}
RUN=$OUT/ab-vae
if [ -f "$RUN/checkpoint.pt" ] && [ "$(wc -l < "$RUN/metrics.jsonl")" -ge 15 ]; then exit 0; fi
RESUME=; [ -d "$RUN" ] && RESUME=--resume  # an interrupted run continues where it stopped
$AUTOVAE train --run "$RUN" $RESUME --data aristoff-bangerth-prior --likelihood gaussian \
  --sigma 0.7071 --latent normal/normal:16 --model vae --beta 1 --network mlp --hidden 400 \
  --depth 3 --epochs 15 --batch-size 64 --lr 2e-4 --seed 0 --nll-samples 100 --quiet
