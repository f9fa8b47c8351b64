#!/bin/bash
# fwp training launched by torchrun (no SLURM). Lightning reads ranks and world size from torchrun's
# environment and does not start processes itself. Run from the repository root.
#
# One node, 4 GPUs:
#   scripts/torchrun_ddp.sh 4 conf/lm/wt103_small.yaml
# Two nodes, 4 GPUs each (run on every node; MASTER_ADDR = the first node's address):
#   NNODES=2 MASTER_ADDR=node01 scripts/torchrun_ddp.sh 4 conf/lm/wt103_small.yaml
# CPU check (2 processes, gloo):
#   PRESET=conf/trainer/ddp_cpu.yaml scripts/torchrun_ddp.sh 2 conf/retrieval/setting1.yaml
#
# Extra arguments after the config are passed to `cli.py fit`. torchrun sends SIGTERM to the workers
# when stopped: each saves <checkpoint dir>/preempted.ckpt at the end of its batch and exits cleanly;
# resume with --ckpt_path.
set -euo pipefail
GPUS_PER_NODE=$1
CONFIG=$2
shift 2
NNODES=${NNODES:-1}
PRESET=${PRESET:-conf/trainer/ddp_gpu.yaml}

if [ "$NNODES" -eq 1 ]; then
    RENDEZVOUS=(--standalone)
else
    RENDEZVOUS=(--nnodes="$NNODES" --rdzv_backend=c10d --rdzv_endpoint="${MASTER_ADDR:?set MASTER_ADDR}:29500")
fi

torchrun "${RENDEZVOUS[@]}" --nproc_per_node="$GPUS_PER_NODE" cli.py fit --config "$CONFIG" \
    --trainer "$PRESET" \
    --trainer.devices "$GPUS_PER_NODE" \
    --trainer.num_nodes "$NNODES" \
    "$@"
