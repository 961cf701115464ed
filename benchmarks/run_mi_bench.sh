#!/usr/bin/env bash
# The issue-3 benchmark runs (each prints a table; logs and JSON in benchmarks/out/).
# LeNet-5 first; ResNet-8 and the VGG-style net then run side by side, one thread each.
set -u
cd "$(dirname "$0")/.."
mkdir -p benchmarks/out
py=.venv/bin/python
[ -f benchmarks/out/mi_vs_l1_lenet5_mnist.json ] || $py -m benchmarks.mi_vs_l1 --model lenet5 --dataset mnist > benchmarks/out/mi_lenet5.log 2>&1
$py -m benchmarks.mi_vs_l1 --model resnet8 --dataset fashion-mnist --criteria mi,mspic,l1,random \
    --train-samples 20000 --train-epochs 3 > benchmarks/out/mi_resnet8.log 2>&1 &
$py -m benchmarks.mi_vs_l1 --model vgg_small --dataset fashion-mnist \
    --train-samples 20000 --train-epochs 3 > benchmarks/out/mi_vgg.log 2>&1 &
wait
