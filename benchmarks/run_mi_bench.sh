#!/usr/bin/env bash
# The issue-3 benchmark runs, in sequence (each prints a table; logs in benchmarks/out/).
set -eu
cd "$(dirname "$0")/.."
mkdir -p benchmarks/out
.venv/bin/python -m benchmarks.mi_vs_l1 --model lenet5 --dataset mnist > benchmarks/out/mi_lenet5.log 2>&1
.venv/bin/python -m benchmarks.mi_vs_l1 --model resnet8 --dataset fashion-mnist --criteria mi,mspic,l1,random \
    --train-samples 20000 --train-epochs 3 > benchmarks/out/mi_resnet8.log 2>&1
.venv/bin/python -m benchmarks.mi_vs_l1 --model vgg_small --dataset fashion-mnist \
    --train-samples 20000 --train-epochs 3 > benchmarks/out/mi_vgg.log 2>&1
