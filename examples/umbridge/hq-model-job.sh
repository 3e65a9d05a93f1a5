#! /bin/bash
# One autovae forward-model server per HyperQueue job, behind UM-Bridge's HPC load balancer.
# See docs/distributed.md ("Inverse problems: model replicas behind UM-Bridge").
#
# Put this file in place of umbridge/hpc/hq_scripts/job.sh (git clone
# https://github.com/UM-Bridge/umbridge; cd umbridge/hpc; make; the hq binary next to it), set
# LOAD_BALANCER_DIR to that hpc folder, edit hq_scripts/allocation_queue.sh for your SLURM
# partition, then on the login node:
#
#   ./load-balancer                                 # listens on http://localhost:4242
#   autovae invert --problem custom --forward umbridge:http://localhost:4242/MODEL \
#       --data y.npy --noise 0.01 --kernel chees --chains 64 --jobs 64 --out chain
#
# The load balancer starts as many of these jobs as requests are in flight (up to what
# allocation_queue.sh allows) and forwards each request to a free server; --jobs is the number
# of requests autovae keeps in flight, so give it the number of replicas you want busy.
# A replica that dies costs the requests it held: autovae stops with one line naming the
# server, and the same command resumes the chain folder from its last checkpoint.
#HQ --resource model=1
#HQ --time-request=1m
#HQ --time-limit=12h
#HQ --stdout none
#HQ --stderr none

: "${LOAD_BALANCER_DIR:?set LOAD_BALANCER_DIR to the umbridge/hpc folder}"
MODEL=${AUTOVAE_MODEL:-aristoff-bangerth}   # darcy, aristoff-bangerth or package.module:Class
NAME=${AUTOVAE_MODEL_NAME:-$MODEL}          # the name the client asks for (…/NAME)
port=${PORT:-4242}
export OMP_NUM_THREADS=1

# listen on the node's address, not only 127.0.0.1, so that the load balancer reaches it
autovae serve-forward "$MODEL" --name "$NAME" --host 0.0.0.0 --port "$port" --workers 1 &

host=$(hostname -I | awk '{print $1}')
while ! curl -s "http://$host:$port/Info" > /dev/null; do
    sleep 1
done

mkdir -p "$LOAD_BALANCER_DIR/urls"
echo "http://$host:$port" > "$LOAD_BALANCER_DIR/urls/url-$HQ_JOB_ID.txt"

sleep infinity  # keep the job, so that HyperQueue sends no other model run to this slot
