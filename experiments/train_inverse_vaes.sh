#!/bin/sh
# The VAE priors of the inverse-problem experiment (docs/inverse.md): 16 latent dims,
# MLP 3x400, Gaussian likelihood with sigma^2 = 1/2 (the summed-MSE loss of Xia & Zabaras),
# 15 epochs, batch 64, Adam 2e-4, on the 23,000 training fields of darcy-grf (16x16).
set -e
OUT=${1:-runs/inverse}
for BETA in 1 0.5 2; do
  RUN=$OUT/vae-beta$BETA
  if [ -f "$RUN/checkpoint.pt" ] && [ "$(wc -l < "$RUN/metrics.jsonl")" -ge 15 ]; then continue; fi
  MODEL=vae; [ "$BETA" = 1 ] || MODEL=beta-vae
  RESUME=; [ -d "$RUN" ] && RESUME=--resume  # an interrupted run continues where it stopped
  autovae train --run "$RUN" $RESUME --data darcy-grf --likelihood gaussian --sigma 0.7071 \
    --latent normal/normal:16 --model $MODEL --beta $BETA --network mlp --hidden 400 --depth 3 \
    --epochs 15 --batch-size 64 --lr 2e-4 --seed 0 --nll-samples 100 --quiet
done
# The Fisher autoencoder prior (issue 12): the same VAE with the authors' penalty 0.1 |J - 5|
RUN=$OUT/fae-w0.1-t5
if [ ! -f "$RUN/checkpoint.pt" ] || [ "$(wc -l < "$RUN/metrics.jsonl")" -lt 15 ]; then
  RESUME=; [ -d "$RUN" ] && RESUME=--resume
  autovae train --run "$RUN" $RESUME --data darcy-grf --likelihood gaussian --sigma 0.7071 \
    --latent normal/normal:16 --fisher-weight 0.1 --fisher-target 5 --network mlp --hidden 400 \
    --depth 3 --epochs 15 --batch-size 64 --lr 2e-4 --seed 0 --nll-samples 100 --quiet
fi
