#!/bin/sh
# SLURM TaskProlog (slurm.conf: TaskProlog=/etc/slurm/thermoledger-task-prolog.sh): tells the
# job's processes that prolog.sh meters this node, so a `thermoledger.Meter` inside the job
# records phases and work but does not sample the GPUs a second time. (SLURM adds the
# "export NAME=value" lines a TaskProlog prints to the task's environment.)
echo "export THERMOLEDGER_NODE_METER=$(hostname):slurm-prolog"
