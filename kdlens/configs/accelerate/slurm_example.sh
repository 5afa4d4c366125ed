#!/usr/bin/env bash
# kdlens distill on several GPU nodes under SLURM: one `accelerate launch` per node, one process per GPU.
#   sbatch kdlens/configs/accelerate/slurm_example.sh CONFIG.yaml output_dir=runs/x save_every=0 [KEY=VALUE ...]
#   ACCELERATE_CONFIG=kdlens/configs/accelerate/deepspeed_zero3.yaml sbatch --nodes 4 kdlens/configs/accelerate/slurm_example.sh ...
# Run it from the repository (or any folder holding kdlens/configs/accelerate/) with kdlens installed on every
# node; the models, the data, KDLENS_CACHE and output_dir must be on a filesystem all nodes see at the same path.
# The run's global batch_size is split over all the GPUs: it must be a multiple of grad_accum x GPUs.
#SBATCH --job-name=kdlens-distill
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.log
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: sbatch $0 CONFIG.yaml KEY=VALUE ..." >&2; exit 2; }

export ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-kdlens/configs/accelerate/fsdp.yaml}
export GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
export MAIN_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MAIN_PORT=${MAIN_PORT:-29500}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}   # every node reads the models from the shared caches
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

# SLURM_NODEID differs per node: expand it inside the task, not here
srun --kill-on-bad-exit=1 bash -c '
  accelerate launch --config_file "$ACCELERATE_CONFIG" \
    --num_machines "$SLURM_NNODES" --machine_rank "$SLURM_NODEID" \
    --num_processes $(( SLURM_NNODES * GPUS_PER_NODE )) \
    --main_process_ip "$MAIN_NODE" --main_process_port "$MAIN_PORT" \
    -m kdlens distill "$@"' kdlens-distill "$@"
